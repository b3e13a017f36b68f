"""Logging: structured JSON lines to the log file, readable coloured lines on the console.

Each line of the file is one JSON object, keys in this order:

* ``timestamp`` — UTC ISO-8601 with milliseconds (``2024-05-01T12:00:00.123Z``);
* ``level`` — DEBUG, INFO, WARNING, ERROR or CRITICAL;
* ``event`` — what happened, a short snake_case word (``launched``, ``failed``,
  ``line_error``, ...), always present: ``log`` for a record that names none;
* ``message`` — the human sentence; ``logger`` — the module that logged it;
* then whatever the record carries in ``extra``: ``job_id``, ``gpus``, ``session``, ``share``,
  ``exit_code``, ``reason``, ``path``, ... (keys whose value is None are left out), and
  ``exception`` with the traceback when there is one.

So ``jq 'select(.job_id == "a1b2c3d4e5")' run/scheduler.log`` follows one job. The file is
rotated by size (``logging.max_log_size_mb``, keeping ``logging.backup_count`` old files as
``scheduler.log.1`` ... ; with 0 the file simply starts over).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

LOGGER_NAME = "gpu_scheduler"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def utc_timestamp(created: float) -> str:
    """POSIX seconds as UTC ISO-8601 with milliseconds and a ``Z``."""
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": utc_timestamp(record.created),
            "level": record.levelname,
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class SizeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that also honours ``backupCount=0``: the file starts over at the
    size limit instead of growing without bound (the standard handler then reopens it for
    appending, so it never shrinks)."""

    def doRollover(self) -> None:  # noqa: N802 (stdlib name)
        if self.backupCount > 0:
            super().doRollover()
            return
        if self.stream:
            self.stream.close()
        self.stream = open(self.baseFilename, "w", encoding=self.encoding)  # noqa: SIM115


def setup_logging(
    level: str,
    log_file: Path | None,
    *,
    console: bool,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
) -> logging.Logger:
    """Configure the package logger (idempotent: old handlers are replaced).

    ``log_file``: JSON lines, rotated at ``max_bytes`` keeping ``backup_count`` old files.
    ``console``: readable coloured lines on stderr (rich), for the foreground daemon.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = SizeRotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        file_handler.setFormatter(JsonLineFormatter())
        logger.addHandler(file_handler)
    if console:
        from rich.console import Console
        from rich.logging import RichHandler

        rich_handler = RichHandler(
            console=Console(stderr=True),
            show_path=False,
            rich_tracebacks=False,
            markup=False,
            log_time_format="[%X]",
        )
        rich_handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(rich_handler)
    return logger
