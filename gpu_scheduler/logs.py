"""Logging: structured JSON lines to the log file, readable coloured lines on the console.

Every record the daemon logs about a job carries ``event`` and ``job_id`` (and often ``gpus``),
passed with ``extra={"event": ..., "job_id": ...}``, so the file can be filtered with jq.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

LOGGER_NAME = "gpu_scheduler"
_FIELDS = ("event", "job_id", "gpus", "session", "exit_code", "share", "reason", "path")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(
    level: str,
    log_file: Path | None,
    *,
    console: bool,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
) -> logging.Logger:
    """Configure the package logger (idempotent: old handlers are replaced)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        file_handler.setFormatter(JsonLineFormatter())
        logger.addHandler(file_handler)
    if console:
        from rich.logging import RichHandler

        rich_handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        rich_handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(rich_handler)
    return logger
