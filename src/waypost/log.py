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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def generation() -> int:
    return _generation
