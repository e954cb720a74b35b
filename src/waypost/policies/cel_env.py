"""CEL for AuthPolicy rules: the variables a `when` expression may use, compiled once per version.

An expression sees two maps: ``request`` (method, path, host, headers) and ``identity``
(kind, consumer, plan, roles, scopes, labels, claims). Anything else is a load-time error, so a
typo never reaches a request.
"""

from __future__ import annotations

from typing import Any

import cel

__all__ = ["VARIABLES", "check_expression", "compile_expression"]

VARIABLES = frozenset({"request", "identity"})


def compile_expression(expression: str) -> Any:
    """Compile ``expression``; ValueError (with CEL's own position message) when it is invalid."""
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


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else text
