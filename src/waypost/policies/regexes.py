"""Regular expressions as Envoy sees them: RE2 syntax and the program-size limit of the fleet.

Envoy compiles every ``safe_regex`` with Google's RE2 and refuses (NACKs) a whole resource when one
does not compile or its RE2 program is larger than the runtime limit
``re2.max_program_size.error_level``: 100 by default in Envoy 1.40 (checked against
``envoy --mode validate``: 100 passes, 101 is refused), raised to :data:`MAX_PROGRAM_SIZE` by every
bootstrap waypost writes (:mod:`waypost.xds.overload` uses this constant). :func:`regex_problem`
compiles with the same library (``google-re2``), counts sizes as Envoy counts them (see
``_OPTIONS``) and applies the same limit, so such a pattern is a ``file:line`` error at load
instead of a NACK. Pure: no I/O.
"""

from __future__ import annotations

import re

import re2

__all__ = ["MAX_PROGRAM_SIZE", "regex_problem"]

MAX_PROGRAM_SIZE = 4096
"""``re2.max_program_size.error_level`` in waypost's bootstraps (Envoy's default is 100): room for
the screening patterns (a few hundred instructions), and the limit policies' regexes must meet."""

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print each refused pattern to stderr
# Envoy 1.40 builds its RE2 programs over bytes (Latin-1): the program sizes it reports are those
# of the pattern's UTF-8 bytes compiled as Latin-1 (measured: `.{50}` is 104 there and 404 as
# UTF-8, `\pL{5}` 39 and 5984). Counting as UTF-8 would refuse patterns Envoy takes.
_OPTIONS.encoding = re2.Options.Encoding.LATIN1


def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse ``pattern`` (RE2 syntax, program size), or None when it is fine."""
    try:
        compiled = re2.compile(pattern.encode(), _OPTIONS)
    except re2.error as exc:
        reason = (
            exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        )
        return _hint(pattern) or f"invalid regular expression (RE2): {reason}"
    size = compiled.programsize
    if size > MAX_PROGRAM_SIZE:
        return (
            f"regular expression too complex for Envoy: RE2 program size {size} > {MAX_PROGRAM_SIZE}"
            " (shorten it, or split it into several patterns)"
        )
    return None


# Constructs Python's `re` accepts but Envoy's RE2 engine refuses: RE2 has no backtracking, so no
# lookaround, backreferences, atomic groups, conditionals or possessive quantifiers.
_RE2_UNSUPPORTED_GROUPS = {
    "(?=": "lookahead '(?='",
    "(?!": "negative lookahead '(?!'",
    "(?<=": "lookbehind '(?<='",
    "(?<!": "negative lookbehind '(?<!'",
    "(?>": "atomic group '(?>'",
    "(?(": "conditional group '(?('",
    "(?P=": "backreference '(?P='",
}
_INLINE_FLAGS_RE = re.compile(r"\(\?([aiLmsux-]+)[:)]")
_RE2_FLAGS = frozenset("ims-")
_BACKREF_DIGITS = frozenset("123456789")
_COUNTED_RE = re.compile(r"\{\d*,?\d*\}$")


def _is_quantifier(pattern: str, index: int) -> bool:
    char = pattern[index]
    return char in "*+?" or (char == "}" and _COUNTED_RE.search(pattern, 0, index + 1) is not None)


def _hint(pattern: str) -> str | None:
    """A friendlier reason for a Perl/Python construct RE2 lacks, when the pattern has one."""
    # Scan rather than search the text: `\(?=` and `[(?=]` are literals, not lookaheads.
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        following = pattern[index + 1 : index + 2]
        if char == "\\":
            if not in_class and following in _BACKREF_DIGITS:
                return f"backreference '\\{following}' is not supported by Envoy's RE2 engine"
            if not in_class and following == "Z":
                return "'\\Z' is not supported by Envoy's RE2 engine: use '$'"
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A ']' right after '[' or '[^' is a member of the class, not its end.
            index += 2 if following == "^" else 1
            if pattern[index : index + 1] == "]":
                index += 1
            continue
        elif char == "(" and following == "?":
            for construct, label in _RE2_UNSUPPORTED_GROUPS.items():
                if pattern.startswith(construct, index):
                    return f"{label} is not supported by Envoy's RE2 engine"
            flags = _INLINE_FLAGS_RE.match(pattern, index)
            if flags and not set(flags.group(1)) <= _RE2_FLAGS:
                return f"inline flags '(?{flags.group(1)}' are not supported by Envoy's RE2 engine"
            index += 2
            continue
        elif following == "+" and _is_quantifier(pattern, index):
            return f"possessive quantifier '{char}+' is not supported by Envoy's RE2 engine"
        index += 1
    return None
