"""Load a policy directory into a validated :class:`~waypost.policies.model.PolicySet`.

Stage 1 of waypost (policy files -> typed model -> Envoy resources -> snapshot -> xDS): read every
``*.yaml``/``*.yml`` file, parse each YAML document keeping the line of every key and item, check
it against its kind's model, run the cross-document checks of :mod:`waypost.policies.validate`,
read the files the policies name (certificates, JWKS), and either return the whole set or raise
one :class:`~waypost.policies.diagnostics.PolicyError` listing every problem, each as
``path:line: Kind name: message``.

The steps live in their own modules: YAML with lines in :mod:`.yaml_reader`, model errors as
``file:line`` messages in :mod:`.document_errors`, referenced files in :mod:`.referenced_files`;
this module runs them in order (:class:`_Load`) and builds the :class:`PolicySet`.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from difflib import get_close_matches
from typing import Any, Final, cast

from pydantic import ValidationError

from waypost.policies.diagnostics import MAX_REPORTED_PER_FILE, Diagnostic, PolicyError, capped
from waypost.policies.document_errors import DocumentSource, at_field, field_path, model_diagnostics
from waypost.policies.endpoint_patch import LastLoad, moved_endpoints, patched
from waypost.policies.load_cache import FileResult, LoadCache
from waypost.policies.model import KINDS, AuthPolicy, Document, PolicySet, Sidecar, SourceRef
from waypost.policies.referenced_files import read_referenced_files
from waypost.policies.sidecars import expand_sidecar
from waypost.policies.source import MAX_POLICY_FILE_BYTES, DirectorySource, PolicySource, SourceError
from waypost.policies.teams import scope_teams, team_folders
from waypost.policies.validate import Entry, validate
from waypost.policies.yaml_reader import YamlDocument, parse_documents, shift_lines, show_value

__all__ = ["MAX_FILE_BYTES", "load_policies"]

MAX_FILE_BYTES: Final = MAX_POLICY_FILE_BYTES
"""Largest policy file read: one cap, enforced by the source (:mod:`.source`) before reading."""

_KIND_ATTRIBUTES: Final = {
    "Gateway": "gateways",
    "Service": "services",
    "Route": "routes",
    "AuthPolicy": "auth_policies",
    "Consumer": "consumers",
    "RateLimitPolicy": "rate_limit_policies",
    "GrpcTarget": "grpc_targets",
    "Sidecar": "sidecars",
    "Api": "apis",
    "Portal": "portals",
    "Team": "teams",
}
_KNOWN_KINDS: Final = ", ".join(KINDS)


def load_policies(
    directory: str | os.PathLike[str] | PolicySource, cache: LoadCache | None = None
) -> PolicySet:
    """Load and validate every policy file under ``directory`` (a path, read with
    :class:`~waypost.policies.source.DirectorySource`, or any source, e.g. a git commit's tree).

    Raises :class:`PolicyError` listing every problem found; never any other exception for bad
    input. Paths in messages are ``directory`` as given joined with each file's relative path.
    With a ``cache`` (one per directory, kept across loads), unchanged documents are not parsed
    or validated again; the result is the same as without it.
    """
    source = DirectorySource(directory) if isinstance(directory, str | os.PathLike) else directory
    with _gc_paused():
        if cache is None:
            return _Load(source).run()
        cache.begin()
        try:
            return _Load(source, cache).run()
        finally:
            cache.end()


# --- The load ------------------------------------------------------------------------------------


def _source_ref(entry: Entry) -> SourceRef:
    return SourceRef(entry.source.path, entry.source.line_of(("name",)))


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Loading allocates hundreds of thousands of small acyclic objects, and the cyclic collector
    # keeps rescanning the growing heap: about a fifth of the load time at 6,000 documents.
    # Reference counting still frees everything; only the cycle scans wait until the end.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Load:
    """One load of one directory: collects entries, files and diagnostics as it goes."""

    def __init__(self, source: PolicySource, cache: LoadCache | None = None) -> None:
        self.source = source
        self.root = source.display
        self.cache = cache
        self.diagnostics: list[Diagnostic] = []
        self.entries: list[Entry] = []
        self.inputs: dict[str, bytes] = {}  # relative path -> bytes, for the version hash
        self.files: dict[str, bytes] = {}
        self.complete = True  # every file was read and parsed: missing targets really are missing
        self.reported: dict[str, int] = {}  # path -> diagnostics of its documents so far
        self.unchecked: dict[str, int] = {}  # path -> documents skipped after too many problems

    def display(self, relative: str) -> str:
        return self.root if relative == "." else os.path.join(self.root, relative)

    def relative(self, path: str) -> str:
        """A diagnostics path back to its path inside the directory (``/``-separated)."""
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def fail(self, path: str, line: int, message: str, kind: str = "", name: str = "") -> None:
        self.diagnostics.append(Diagnostic(path, line, kind, name, message))

    def run(self) -> PolicySet:
        try:
            files = self.source.policy_files()
        except SourceError as exc:
            raise PolicyError([Diagnostic(self.root, 0, "", "", str(exc))]) from None
        for relative, message in self.source.problems():
            self.complete = False
            self.fail(self.display(relative), 0, message)
        for relative in files:
            self.load_file(relative)
        self.report_unchecked()
        read = tuple(self.entries)
        last = self.cache.last if self.cache is not None else None
        if self.cache is not None:
            self.cache.last = None  # set again below, once this load succeeds
            self.cache.patched = False
        moved = moved_endpoints(last, read) if self.complete and not self.diagnostics else None
        if last is not None and moved is not None:
            policy = self.patch(last, moved)
            if policy is not None:
                if self.cache is not None:
                    self.cache.patched = True
                return self.remember(read, policy)
        self.expand_sidecars()
        self.entries, overstepped = scope_teams(self.entries, self.relative)
        self.diagnostics.extend(overstepped)
        self.diagnostics.extend(validate(self.entries, check_references=self.complete))
        self.read_referenced_files()
        if self.diagnostics:
            raise PolicyError(capped(self.diagnostics), team_folders=team_folders(self.entries))
        return self.remember(read, self.policy_set())

    def patch(self, last: LastLoad, moved: list[tuple[Entry, Entry]]) -> PolicySet | None:
        """The last set with Services whose endpoints alone moved (see :mod:`.endpoint_patch`);
        None, with this load's state as it was, when the referenced files say otherwise."""
        inputs, reported = dict(self.inputs), len(self.diagnostics)
        self.read_referenced_files()  # a certificate may have changed with the endpoints
        if len(self.diagnostics) == reported and self.files == last.policy.files:
            version = self.version()
            return patched(last.policy, moved, version=version, files=self.files, source_of=_source_ref)
        self.inputs, self.files = inputs, {}
        del self.diagnostics[reported:]
        return None

    def remember(self, read: tuple[Entry, ...], policy: PolicySet) -> PolicySet:
        if self.cache is not None:
            self.cache.last = LastLoad(read, policy)
        return policy

    def load_file(self, relative: str) -> None:
        path = self.display(relative)
        try:
            data = self.source.read(relative, limit=MAX_POLICY_FILE_BYTES)
        except SourceError as exc:
            self.complete = False
            self.fail(path, 0, str(exc))
            return
        self.inputs[relative] = data
        if self.cache is None:
            self.load_data(path, data)
            return
        loaded = self.cache.load(path, data, self.load_apart)
        self.entries.extend(loaded.entries)
        self.diagnostics.extend(loaded.diagnostics)
        self.complete &= loaded.complete

    def load_data(self, path: str, data: bytes, offset: int = 0) -> None:
        """Parse ``data`` and check each document against its kind's model; ``offset`` lines of
        the file come before ``data``."""
        documents, problem = parse_documents(data)
        if problem is not None:
            self.complete = False
            self.fail(path, problem.line + offset, problem.message)
        for document in documents:
            if offset:
                shift_lines(document, offset)
            self.load_document(path, document)

    def report_unchecked(self) -> None:
        """One line per file whose documents were skipped after too many problems."""
        for path, count in self.unchecked.items():
            self.complete = False  # a skipped document may define what others refer to
            message = f"{count} more document(s) not checked: the file has {MAX_REPORTED_PER_FILE}+ problems"
            self.fail(path, 0, message)
        self.unchecked.clear()

    def load_apart(self, path: str, data: bytes, offset: int) -> FileResult:
        """:meth:`load_data` into a result of its own, for the :class:`LoadCache`."""
        part = _Load(self.source)
        part.load_data(path, data, offset)
        part.report_unchecked()
        lines = tuple(cast(DocumentSource, e.source).document.line for e in part.entries)
        return FileResult(tuple(part.entries), lines, tuple(part.diagnostics), part.complete)

    def load_document(self, path: str, document: YamlDocument) -> None:
        if self.reported.get(path, 0) >= MAX_REPORTED_PER_FILE and document.value is not None:
            # Enough problems in this file to fail the load: the rest is not validated (each
            # unknown field costs a "did you mean" search), only counted.
            self.unchecked[path] = self.unchecked.get(path, 0) + 1
            return
        before = len(self.diagnostics)
        self._load_document(path, document)
        self.reported[path] = self.reported.get(path, 0) + len(self.diagnostics) - before

    def _load_document(self, path: str, document: YamlDocument) -> None:
        value = document.value
        if value is None and not document.issues:
            return  # an empty document, e.g. a trailing `---`
        source = DocumentSource(path, document)
        is_mapping = type(value) is dict
        raw_kind = value.get("kind") if is_mapping else None
        raw_name = value.get("name") if is_mapping else None
        model = KINDS.get(raw_kind) if type(raw_kind) is str else None
        kind = raw_kind if model is not None and isinstance(raw_kind, str) else ""
        name = raw_name if model is not None and isinstance(raw_name, str) else ""
        for line, loc, message in document.issues:
            self.fail(path, line, at_field(loc, message), kind, name)
        if not is_mapping:
            if not document.fatal:
                # The value's type, never its text: a file that is not policy at all (a key, a
                # password file) must not have its first line printed.
                got = "a string" if isinstance(value, str) else show_value(value)
                message = f"a policy document is a mapping with kind and name, got {got}"
                self.fail(path, document.line, message)
            return
        if model is None:
            self.fail(path, source.line_of(("kind",)), self.kind_problem(value))
            return
        try:
            checked: Document | None = None if document.fatal else model.model_validate(value)
        except ValidationError as exc:
            checked = None
            self.diagnostics.extend(model_diagnostics(exc, model, source, kind, name))
        except Exception as exc:
            # A validator in the model let a non-ValueError escape: still the input's fault, and
            # the control plane must report it rather than crash on it.
            checked = None
            self.fail(path, document.line, f"invalid document: {exc}", kind, name)
        if name:
            self.entries.append(Entry(kind, name, source, checked))

    def expand_sidecars(self) -> None:
        """Each Sidecar's Gateways, Routes and Services join the entries, placed at its lines."""
        sidecars = [e for e in self.entries if isinstance(e.document, Sidecar)]
        by_name = {e.name: e.document for e in sidecars if isinstance(e.document, Sidecar)}
        for entry in sidecars:
            assert isinstance(entry.document, Sidecar)
            expansion = expand_sidecar(entry.document, by_name)
            for loc, message in expansion.problems:
                line = entry.source.line_of(loc)
                self.fail(entry.source.path, line, at_field(loc, message), entry.kind, entry.name)
            self.entries.extend(Entry(d.kind, d.name, entry.source, d) for d in expansion.documents)

    @staticmethod
    def kind_problem(value: dict[str, Any]) -> str:
        raw_kind = value.get("kind")
        if "kind" not in value:
            return f"field 'kind' is required; known kinds: {_KNOWN_KINDS}"
        if type(raw_kind) is not str:
            return f"kind: expected a string, got {show_value(raw_kind)}; known kinds: {_KNOWN_KINDS}"
        lowered = {known.lower(): known for known in KINDS}
        guess = get_close_matches(raw_kind.lower(), lowered, n=1, cutoff=0.6)
        hint = f" (did you mean '{lowered[guess[0]]}'?)" if guess else ""
        return f"unknown kind '{raw_kind}'{hint}; known kinds: {_KNOWN_KINDS}"

    def read_referenced_files(self) -> None:
        self.diagnostics.extend(
            read_referenced_files(self.source, self.entries, inputs=self.inputs, files=self.files)
        )

    def version(self) -> str:
        # Length-prefixed (path, bytes) pairs in path order: the same files give the same hash on
        # every machine, wherever the directory is, and no two file sets share an encoding.
        digest = hashlib.sha256()
        for relative, data in sorted(self.inputs.items()):
            encoded = relative.encode()
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.hexdigest()

    def policy_set(self) -> PolicySet:
        by_kind: dict[str, dict[str, Document]] = {kind: {} for kind in KINDS}
        sources: dict[tuple[str, str], SourceRef] = {}
        field_sources: dict[tuple[str, str, str], SourceRef] = {}
        # Grouped by kind, then each kind's names sorted (plain strings: the cheapest sort).
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for entry in self.entries:
            entries[entry.kind][entry.name] = entry  # names are unique per kind (validated)
        for kind in sorted(entries):
            named = entries[kind]
            for name in sorted(named):
                entry = named[name]
                assert entry.document is not None  # any invalid document raised PolicyError above
                by_kind[kind][name] = entry.document
                memo = entry.memo
                source = memo.get("source")
                if source is None:
                    source = memo["source"] = _source_ref(entry)
                sources[(kind, name)] = source
                if kind == "AuthPolicy":
                    self.field_sources(entry, field_sources)
        attributes: dict[str, Any] = {_KIND_ATTRIBUTES[kind]: docs for kind, docs in by_kind.items()}
        return PolicySet(
            version=self.version(),
            files=self.files,
            sources=sources,
            field_sources=field_sources,
            **attributes,
        )

    @staticmethod
    def field_sources(entry: Entry, out: dict[tuple[str, str, str], SourceRef]) -> None:
        """Where fields checked after loading were written (see ``PolicySet.field_sources``)."""
        if not isinstance(entry.document, AuthPolicy):
            return
        for index, source in enumerate(entry.document.identity):
            if source.custom is not None:
                loc = ("identity", index, "custom", "plugin")
                where = SourceRef(entry.source.path, entry.source.line_of(loc))
                out[(entry.kind, entry.name, field_path(loc))] = where
