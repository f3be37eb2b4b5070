"""structlog set-up: JSON lines by default, `console` for humans.

Everything goes through one renderer: structlog loggers, and the stdlib `logging` records of
libraries (aiohttp, asyncio) and `warnings`, via structlog's ProcessorFormatter on the root
logger, so no line on stderr is in another format. Every process calls it once at start
(control process, workers, the comparer children), from `--log-format`/`--log-level`.

Every line says who wrote it: `logger` (the name given to `structlog.get_logger(name)`, e.g.
`strangler.app`, or the library logger's name) and `process`, the same name the process has in
the `process_*` metrics: `main` (the `serve` process), `worker-N`, and `<owner>/comparer` for a
data plane's comparer child. A process learns its name from `configure(process=...)`, or, for
the comparer, from its parent: `configure` exports it in STRANGLER_PROCESS, which children
inherit, and `role` appends to it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

import structlog

PROCESS_ENV = "STRANGLER_PROCESS"
_process = "main"


def process_name() -> str:
    """This process's name in log lines and metrics (see the module docstring)."""
    return _process


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows the name it was asked for, for `add_logger_name`."""

    def __init__(self, file: IO[str], name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "strangler")


def _add_process(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict.setdefault("process", _process)
    return event_dict


def configure(fmt: str = "json", level: str = "info", stream: IO[str] | None = None, *,
              process: str | None = None, role: str | None = None) -> None:
    """`process`: this process's name (the control process: `main`; a worker: `worker-N`);
    None takes it from STRANGLER_PROCESS (set by the parent) or `main`. `role`: appended as
    `<name>/<role>` (the comparer). The result is exported for this process's children."""
    global _process
    name = process or os.environ.get(PROCESS_ENV) or "main"
    _process = f"{name}/{role}" if role else name
    os.environ[PROCESS_ENV] = _process
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
            structlog.stdlib.add_logger_name,  # reads the logger's `name` (ours has one)
            _add_process,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_NamedPrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            _add_process,
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
