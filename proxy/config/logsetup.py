"""structlog set-up: JSON lines by default, `console` for humans.

Everything goes through one renderer: structlog loggers, and the stdlib `logging` records of
libraries (aiohttp, asyncio, the Unleash SDK) and `warnings`, via structlog's ProcessorFormatter
on the root logger, so no line on stderr is in another format. Every process calls it once at
start (control process, workers, the comparer children), from `--log-format`/`--log-level`.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog


def configure(fmt: str = "json", level: str = "info", stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    logging.captureWarnings(True)
