"""structlog set-up: JSON lines when stderr is not a terminal (production), pretty otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "generation", "get_logger"]


_generation = 0
"""Bumped by each :func:`configure_logging`, so fast-path writers can notice a new set-up."""


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    global _generation
    _generation += 1
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=True,
    )


class _StderrLogger:
    """Writes each line to ``sys.stderr`` as it is *now*, not as it was at set-up: whoever swaps
    stderr later (a test runner's capture, a daemonizing wrapper) must not leave waypost writing
    into a closed file, which would fail the very code path that was logging."""

    def __init__(self, *_args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def generation() -> int:
    return _generation
