"""Structured logging for every gateway process, configured from ``logging.*``."""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog

from savegress_gw.profile.settings import LoggingSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(settings: LoggingSettings, process: str) -> structlog.typing.FilteringBoundLogger:
    """Configure structlog in this process (json or text, level, output) and return its logger."""
    stream: IO[str]
    if settings.output == "stdout":
        stream = sys.stdout
    elif settings.output == "stderr":
        stream = sys.stderr
    else:
        stream = open(settings.output, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    renderer = (structlog.processors.JSONRenderer() if settings.format == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=structlog.WriteLoggerFactory(stream),  # one write per line: no interleaving
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(process=process)
