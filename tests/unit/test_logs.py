"""The daemon's log: JSON lines with the documented fields, rotated by size; rich on the console."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.logging import RichHandler

from gpu_scheduler.logs import LOGGER_NAME, SizeRotatingFileHandler, setup_logging, utc_timestamp

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """setup_logging configures the package logger: leave it as it was found."""
    logger = logging.getLogger(LOGGER_NAME)
    before = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in before[0]:
        logger.addHandler(handler)
    logger.setLevel(before[1])
    logger.propagate = before[2]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_line_is_json_with_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "scheduler.log"
    setup_logging("INFO", path, console=False)
    log = logging.getLogger("gpu_scheduler.daemon")
    log.info("launched %s on GPU %s", "train7b", "0,1",
             extra={"event": "launched", "job_id": "a1b2c3d4e5", "gpus": [0, 1],
                    "session": "gpujob_0_train_a1b2c3d4e5", "share": "2", "exit_code": None})  # fmt: skip
    log.warning("plain message")
    log.debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("probe crashed", extra={"event": "probe_error", "attempt": 3})
    first, second, third = lines(path)
    assert list(first)[:5] == ["timestamp", "level", "event", "message", "logger"]
    assert TIMESTAMP.match(first["timestamp"])
    assert first["level"] == "INFO" and first["event"] == "launched"
    assert first["message"] == "launched train7b on GPU 0,1"
    assert first["logger"] == "gpu_scheduler.daemon"
    assert first["job_id"] == "a1b2c3d4e5" and first["gpus"] == [0, 1]
    assert first["session"] == "gpujob_0_train_a1b2c3d4e5" and first["share"] == "2"
    assert "exit_code" not in first  # None values are left out
    assert second["event"] == "log" and second["level"] == "WARNING"
    assert third["attempt"] == 3 and "ValueError: boom" in third["exception"]


def test_timestamps_are_utc_iso_8601_with_milliseconds() -> None:
    assert utc_timestamp(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"
    assert utc_timestamp(1_700_000_000.9996) == "2023-11-14T22:13:20.999Z"


def test_the_file_rotates_by_size_and_keeps_backup_count_files(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.log"
    setup_logging("INFO", path, console=False, max_bytes=4000, backup_count=2)
    log = logging.getLogger("gpu_scheduler.daemon")
    for n in range(300):
        log.info("job %d finished", n, extra={"event": "completed", "job_id": f"{n:010x}"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["scheduler.log", "scheduler.log.1", "scheduler.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 4000
        assert all(entry["event"] == "completed" for entry in lines(tmp_path / name))
    assert lines(path)[-1]["job_id"] == f"{299:010x}"  # the newest lines are in the live file


def test_backup_count_zero_starts_the_file_over_instead_of_growing(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.log"
    setup_logging("INFO", path, console=False, max_bytes=2000, backup_count=0)
    log = logging.getLogger("gpu_scheduler.daemon")
    for n in range(200):
        log.info("line %d", n)
    assert [p.name for p in tmp_path.iterdir()] == ["scheduler.log"]
    assert path.stat().st_size <= 2000 and lines(path)[-1]["message"] == "line 199"


def test_setup_is_idempotent_and_the_console_gets_readable_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "scheduler.log"
    setup_logging("INFO", path, console=True)
    logger = setup_logging("INFO", path, console=True)
    kinds = sorted(type(h).__name__ for h in logger.handlers)
    assert kinds == sorted([RichHandler.__name__, SizeRotatingFileHandler.__name__])
    logging.getLogger("gpu_scheduler.daemon").warning("GPU 3 is unhealthy", extra={"event": "x"})
    err = capsys.readouterr().err
    assert "GPU 3 is unhealthy" in err and "WARNING" in err and "{" not in err
    assert len(lines(path)) == 1
