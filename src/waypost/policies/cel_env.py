"""CEL for AuthPolicy rules: the variables a `when` expression may use, compiled once per version.

An expression sees two maps: ``request`` (method, path, host, headers) and ``identity``
(kind, consumer, plan, roles, scopes, labels, claims). Anything else is a load-time error, so a
typo never reaches a request.

CONTRACT (no policy crashes the server): the CEL library is native code that recurses over the
expression's tree, and a tree thousands of levels deep overflows the stack (SIGSEGV) when it is
compiled (a long member chain) or evaluated (a long chain of ``+`` or ``[...]``). So every
expression is bounded *before* it reaches the library (:func:`expression_bounds_problem`): at most
:data:`MAX_CHARS` characters and :data:`MAX_TOKENS` tokens (so the tree has at most that many
nodes, far below the ~10,000 levels measured to crash), and comprehension macros (``all``,
``exists``, ``map``, ...) nested at most :data:`MAX_COMPREHENSION_NESTING` deep, so evaluation cost
stays polynomial of low degree in the request's size. The bound is checked where expressions are
compiled (load, validate, the decision service), so no path compiles an unchecked expression.
"""

from __future__ import annotations

import re
from typing import Any

import cel

__all__ = [
    "MAX_CHARS",
    "MAX_COMPREHENSION_NESTING",
    "MAX_TOKENS",
    "VARIABLES",
    "check_expression",
    "compile_expression",
    "expression_bounds_problem",
]

VARIABLES = frozenset({"request", "identity"})

MAX_CHARS = 4096
MAX_TOKENS = 512
MAX_COMPREHENSION_NESTING = 2
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TOKEN_RE = re.compile(
    "|".join(
        (
            # A string's opening (prefix and quote); its body is skipped by _skip_string.
            "(?P<string>[rRbB]{0,2}(?:'{3}|\"{3}|'|\"))",
            r"(?P<ident>[A-Za-z_][A-Za-z0-9_]*)",
            r"(?P<number>\.?[0-9][0-9A-Za-z_.]*)",
            r"(?P<space>\s+|//[^\n]*)",  # blanks and comments
            r"(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])",
        )
    )
)


def expression_bounds_problem(expression: str) -> str | None:
    """Why ``expression`` is too big or too deep to hand to the CEL library, or None.

    A linear scan in pure Python that never recurses: safe on any input, however hostile."""
    if len(expression) > MAX_CHARS:
        return f"CEL expression is {len(expression)} characters; the limit is {MAX_CHARS}"
    tokens = 0
    depth = 0
    # Bracket depth at which each open comprehension macro's argument list started.
    macro_depths: list[int] = []
    previous = ""
    index = 0
    while index < len(expression):
        match = _TOKEN_RE.match(expression, index)
        if match is None:
            return f"CEL expression has an unexpected character {expression[index]!r} at position {index}"
        kind, text = match.lastgroup, match.group()
        index = match.end()
        if kind == "space":
            continue
        tokens += 1
        if tokens > MAX_TOKENS:
            return f"CEL expression has more than {MAX_TOKENS} tokens; split the rule or simplify it"
        if kind == "string":
            index = _skip_string(expression, index, text)
            if index < 0:
                return "CEL expression has an unterminated string"
        elif text in "([{":
            depth += 1
            if text == "(" and previous in _MACROS:
                macro_depths.append(depth)
                if len(macro_depths) > MAX_COMPREHENSION_NESTING:
                    return (
                        f"CEL expression nests comprehension macros ({', '.join(sorted(_MACROS))}) more"
                        f" than {MAX_COMPREHENSION_NESTING} deep"
                    )
        elif text in ")]}":
            if macro_depths and macro_depths[-1] == depth:
                macro_depths.pop()
            depth -= 1
        previous = text if kind == "ident" else ""
    return None


def _skip_string(expression: str, index: int, opening: str) -> int:
    """The index just past the string whose opening (prefix and quote) ends at ``index``; -1 if
    it never ends."""
    quote = opening.lstrip("rRbB")
    raw = "r" in opening.lower().replace(quote, "")
    while index < len(expression):
        if expression.startswith(quote, index):
            return index + len(quote)
        if expression[index] == "\\" and not raw:
            index += 2
        elif expression[index] == "\n" and len(quote) == 1:
            return -1
        else:
            index += 1
    return -1


def compile_expression(expression: str) -> Any:
    """Compile ``expression``; ValueError (with CEL's own position message) when it is invalid or
    exceeds the bounds (checked first: see the module's CONTRACT)."""
    problem = expression_bounds_problem(expression)
    if problem is not None:
        raise ValueError(problem)
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        raise ValueError(f"invalid CEL expression: {_first_line(str(exc))}") from None
    unknown = sorted({name.split(".")[0] for name in program.variables()} - VARIABLES)
    if unknown:
        raise ValueError(
            f"CEL expression uses unknown variable(s) {', '.join(unknown)}; known: request, identity"
        )
    return program


def check_expression(expression: str) -> None:
    compile_expression(expression)


def _first_line(text: str, limit: int = 240) -> str:
    # CEL's message quotes the whole expression; an error line stays readable whatever its size.
    lines = [line for line in text.splitlines() if line.strip()]
    line = " ".join(lines[:2]) if lines else text
    return line if len(line) <= limit else line[: limit - 1] + "…"
