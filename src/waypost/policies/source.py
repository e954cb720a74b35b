"""Where policy files come from: a directory on disk, or the tree of one git commit.

The loader reads every file through a :class:`PolicySource`: the policy files (paths relative to
the policy directory, ``/``-separated) and the bytes of any file, policy or referenced
(certificates, keys, JWKS, descriptors). Both sources keep the same rules, so what passes
``waypost validate`` on a checkout is what ``waypost serve`` reads from its commit:

- Only regular files inside the policy directory are read. A symlink is followed only while it
  stays inside the directory (a Kubernetes ConfigMap mount is visible symlinks into its hidden
  ``..data`` folder); one pointing outside, at a FIFO, a device or a socket is refused with a
  clear message, before anything is opened for reading (a FIFO is never waited on, ``/dev/zero``
  never read). A ``*.yaml`` symlink must point at another ``*.yaml`` file: a symlink to
  ``tls.key`` would otherwise print the key's first line in a parse error.
- Sizes are capped per file (:data:`MAX_POLICY_FILE_BYTES`, :data:`MAX_REFERENCED_FILE_BYTES`)
  and per load (:data:`MAX_TOTAL_BYTES`): a file that grows while read is cut at the cap and
  refused, so memory stays bounded whatever the directory holds.
- Messages (:class:`SourceError`) name the path, never the content or a symlink's target.

:class:`DirectorySource` also remembers what it read (stat and sha256 per file, the listing of
each folder) so a caller can check that nothing changed since (:meth:`unchanged`): ``waypost
serve`` applies a plain directory only once its files read the same twice, a debounce window
apart. :class:`GitTreeSource` reads blobs of one commit with git plumbing
(``ls-tree``, ``cat-file``), never the working files, so a checkout or a pull in progress is
never seen half-done. Every git call is a subprocess with a timeout.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "MAX_POLICY_FILE_BYTES",
    "MAX_REFERENCED_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "DirectorySource",
    "GitTreeSource",
    "PolicySource",
    "SourceError",
    "is_policy_file",
]

MAX_POLICY_FILE_BYTES: Final = 1024 * 1024
"""Largest ``*.yaml`` file read (1 MiB), refused unread: a 10 MB file of a million keys took 28 s
to refuse when it was read. A large directory's biggest file is a few hundred kB; about 5,000
Consumers fit in one file, more go in several."""
MAX_REFERENCED_FILE_BYTES: Final = 8 * 1024 * 1024
"""Largest certificate, key, JWKS or descriptor set read (descriptor sets are the big ones)."""
MAX_TOTAL_BYTES: Final = 256 * 1024 * 1024
"""Most bytes one load reads, all files together."""
MAX_SYMLINK_HOPS: Final = 8
GIT_TIMEOUT: Final = 30.0
_GIT_ENV: Final = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "LC_ALL": "C",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_LITERAL_PATHSPECS": "1",
}


class SourceError(Exception):
    """A file that cannot be read; the message names it (never its content) and says why."""


def is_policy_file(relative: str) -> bool:
    """``*.yaml`` / ``*.yml``, no hidden part (``.git``, editor swap files, a ConfigMap's ``..data``)."""
    parts = relative.split("/")
    return parts[-1].endswith((".yaml", ".yml")) and not any(part.startswith(".") for part in parts)


class PolicySource(Protocol):
    """The files of one policy directory, as one consistent set."""

    @property
    def display(self) -> str:
        """The directory as the user named it, prefixed to paths in messages."""
        ...

    def policy_files(self) -> list[str]:
        """Every policy file (sorted, relative); raises :class:`SourceError` if unlistable."""
        ...

    def problems(self) -> list[tuple[str, str]]:
        """``(relative path, message)`` for entries that could not be listed (e.g. unreadable folders)."""
        ...

    def read(self, relative: str, *, limit: int) -> bytes:
        """The bytes of a regular file inside the directory, at most ``limit`` of them."""
        ...


class _Budget:
    """Bytes left for the whole load."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL_BYTES

    def take(self, relative: str, size: int) -> None:
        if size > self.left:
            raise SourceError(
                f"'{relative}': the policy directory holds more than {_mib(MAX_TOTAL_BYTES)} of files"
            )
        self.left -= size


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB"


def _too_large(relative: str, limit: int) -> SourceError:
    return SourceError(f"'{relative}' is larger than {_mib(limit)}; not read")


def _not_regular(relative: str, mode: int) -> SourceError:
    if stat.S_ISDIR(mode):
        return SourceError(f"'{relative}' is a directory, not a file")
    what = (
        "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "something else"
    )
    return SourceError(f"'{relative}' is {what}, not a regular file; not read")


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one read saw of a file: enough to tell whether it changed since."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str


class DirectorySource:
    """The files of a directory on disk, read safely (see the module docstring).

    One instance is one load: it records what it read, for :meth:`unchanged`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._display = os.fspath(directory)
        self._root = os.path.realpath(self._display)
        self._budget = _Budget()
        self._problems: list[tuple[str, str]] = []
        self._seen: dict[str, _Seen] = {}
        self._folders: dict[str, tuple[int, tuple[str, ...]]] = {}  # relative -> (mtime_ns, names)
        self._raced = False  # a file changed while being read

    @property
    def display(self) -> str:
        return self._display

    def problems(self) -> list[tuple[str, str]]:
        return list(self._problems)

    def policy_files(self) -> list[str]:
        if not os.path.isdir(self._root):
            what = "does not exist" if not os.path.exists(self._display) else "is not a directory"
            raise SourceError(f"policy directory {what}")
        found: list[str] = []

        def unreadable(exc: OSError) -> None:
            where = os.path.relpath(exc.filename, self._root) if exc.filename else "."
            self._problems.append((where.replace(os.sep, "/"), f"cannot read directory: {exc.strerror}"))

        # Symlinked folders are not walked (os.walk's default): their files could be anywhere.
        for current, directories, names in os.walk(self._root, onerror=unreadable):
            directories[:] = sorted(name for name in directories if not name.startswith("."))
            relative_dir = os.path.relpath(current, self._root).replace(os.sep, "/")
            try:
                folder_mtime = os.stat(current).st_mtime_ns
            except OSError:
                folder_mtime = 0
            self._folders[relative_dir] = (folder_mtime, tuple(sorted(names)))
            for name in names:
                relative = name if relative_dir == "." else f"{relative_dir}/{name}"
                if is_policy_file(relative):
                    found.append(relative)
        return sorted(found)

    def read(self, relative: str, *, limit: int) -> bytes:
        path = os.path.join(self._root, *relative.split("/"))
        real = os.path.realpath(path)
        if real != self._root and not real.startswith(self._root + os.sep):
            raise SourceError(f"'{relative}' is a symlink to a file outside the policy directory; not read")
        if real != path and is_policy_file(relative) and not real.endswith((".yaml", ".yml")):
            raise SourceError(
                f"'{relative}' is a symlink to a file that is not a policy file (*.yaml); not read"
            )
        try:
            # lstat before open: a FIFO or a device is refused without ever being opened.
            mode = os.lstat(real).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(relative, mode)
            # O_NOFOLLOW: a symlink swapped in since realpath() fails instead of being followed;
            # O_NONBLOCK: a FIFO swapped in is not waited on (fstat below refuses it).
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            fd = os.open(real, flags)
        except FileNotFoundError:
            raise SourceError(f"file '{relative}' not found") from None
        except OSError as exc:
            raise SourceError(f"cannot read '{relative}': {exc.strerror}") from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise _not_regular(relative, before.st_mode)
            if before.st_size > limit:
                raise _too_large(relative, limit)
            data = _read_at_most(fd, limit + 1)
            if len(data) > limit:  # grew while being read
                raise _too_large(relative, limit)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self._raced = True
                raise SourceError(f"'{relative}' changed while being read")
        except OSError as exc:
            raise SourceError(f"cannot read '{relative}': {exc.strerror}") from None
        finally:
            os.close(fd)
        self._budget.take(relative, len(data))
        self._seen[relative] = _Seen(
            after.st_ino, len(data), after.st_mtime_ns, after.st_ctime_ns, hashlib.sha256(data).hexdigest()
        )
        return data

    def unchanged(self) -> bool:
        """Whether every file read (and every folder listed) is still as it was: same stat, same
        sha256, same names. Reads the files again (through a fresh source, with the same rules)."""
        if self._raced:
            return False
        again = DirectorySource(self._display)
        try:
            again.policy_files()
            if again._folders != self._folders:
                return False
            for relative, seen in self._seen.items():
                limit = max(seen.size, 1)
                again.read(relative, limit=limit)
                if again._seen[relative] != seen:
                    return False
        except SourceError:
            return False
        return True


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- git -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TreeEntry:
    mode: str
    kind: str  # blob, tree, commit (a submodule)
    oid: str
    size: int


class GitTreeSource:
    """The policy directory as committed in ``commit``: blobs read with git plumbing."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        toplevel: str,
        commit: str,
        display: str | None = None,
        known: Mapping[str, bytes] | None = None,
    ) -> None:
        self._display = display if display is not None else os.fspath(directory)
        self._toplevel = toplevel
        self.commit = commit
        real = os.path.realpath(os.fspath(directory))
        prefix = os.path.relpath(real, os.path.realpath(toplevel)).replace(os.sep, "/")
        self._prefix = "" if prefix == "." else prefix + "/"
        self._budget = _Budget()
        self._entries: dict[str, _TreeEntry] | None = None
        self._blobs: dict[str, bytes] = {}
        self._known = known or {}
        """Blobs an earlier load read, by object id (a blob never changes): not read again."""

    @property
    def display(self) -> str:
        return self._display

    def problems(self) -> list[tuple[str, str]]:
        return []

    def _git(self, *args: str, input: bytes | None = None) -> bytes:
        try:
            result = subprocess.run(
                ["git", *args],
                cwd=self._toplevel,
                input=input,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                env={**os.environ, **_GIT_ENV},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"cannot read commit {self.commit[:12]}: {exc}") from None
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()[:300]
            raise SourceError(f"cannot read commit {self.commit[:12]}: {message}")
        return result.stdout

    def _tree(self) -> dict[str, _TreeEntry]:
        if self._entries is None:
            entries: dict[str, _TreeEntry] = {}
            pathspec = self._prefix or "."
            listing = self._git("ls-tree", "-r", "-z", "--long", "--full-tree", self.commit, "--", pathspec)
            for record in listing.split(b"\0"):
                if not record:
                    continue
                meta, _, name = record.partition(b"\t")
                mode, kind, oid, size = meta.decode().split()
                path = name.decode(errors="surrogateescape")
                if path.startswith(self._prefix):
                    entries[path[len(self._prefix) :]] = _TreeEntry(
                        mode, kind, oid, int(size) if size != "-" else 0
                    )
            self._entries = entries
        return self._entries

    def policy_files(self) -> list[str]:
        files = sorted(path for path in self._tree() if is_policy_file(path))
        small = [path for path in files if self._tree()[path].size <= MAX_POLICY_FILE_BYTES]
        self._prefetch([self._tree()[path].oid for path in small if self._tree()[path].kind == "blob"])
        return files

    def _prefetch(self, oids: list[str]) -> None:
        """Read many blobs with one ``git cat-file --batch``."""
        wanted = []
        for oid in dict.fromkeys(oids):
            if oid in self._blobs:
                continue
            if oid in self._known:
                self._blobs[oid] = self._known[oid]
            else:
                wanted.append(oid)
        if not wanted:
            return
        output = self._git("cat-file", "--batch", input="".join(f"{oid}\n" for oid in wanted).encode())
        offset = 0
        for oid in wanted:
            header_end = output.index(b"\n", offset)
            header = output[offset:header_end].split()
            size = int(header[2]) if len(header) == 3 else 0
            self._blobs[oid] = output[header_end + 1 : header_end + 1 + size]
            offset = header_end + 1 + size + 1

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob this load read, by object id (``known`` for the next load of the same checkout)."""
        return self._blobs

    def read(self, relative: str, *, limit: int) -> bytes:
        entry = self._resolve(relative)
        if entry.size > limit:
            raise _too_large(relative, limit)
        if entry.oid not in self._blobs:
            self._prefetch([entry.oid])
        data = self._blobs[entry.oid]
        self._budget.take(relative, len(data))
        return data

    def _resolve(self, relative: str) -> _TreeEntry:
        """The blob ``relative`` names in the commit, following symlinks that stay inside."""
        tree = self._tree()
        path = posixpath.normpath(relative)
        for _ in range(MAX_SYMLINK_HOPS):
            entry = tree.get(path)
            if entry is None:
                if any(other.startswith(path + "/") for other in tree):
                    raise SourceError(f"'{relative}' is a directory, not a file")
                raise SourceError(f"file '{relative}' not found in commit {self.commit[:12]}")
            if entry.kind == "commit":
                raise SourceError(f"'{relative}' is a git submodule, not a file")
            if entry.mode != "120000":
                if (
                    path != posixpath.normpath(relative)
                    and is_policy_file(relative)
                    and not path.endswith((".yaml", ".yml"))
                ):
                    raise SourceError(
                        f"'{relative}' is a symlink to a file that is not a policy file (*.yaml); not read"
                    )
                return entry
            if entry.oid not in self._blobs:
                self._prefetch([entry.oid])
            target = self._blobs[entry.oid].decode(errors="surrogateescape")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if target.startswith("/") or joined == ".." or joined.startswith("../"):
                raise SourceError(
                    f"'{relative}' is a symlink to a file outside the policy directory; not read"
                )
            path = joined
        raise SourceError(f"'{relative}': more than {MAX_SYMLINK_HOPS} symlinks in a row; not read")
