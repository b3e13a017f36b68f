"""The exception tree. The CLI maps each to a message and an exit code; users never see a traceback."""

from __future__ import annotations


class GpuSchedulerError(Exception):
    """Base of every error the tool reports to its user."""


class JobFileError(GpuSchedulerError):
    """A jobs file or llm_config problem located at a file and line."""

    def __init__(self, path: str, line: int, text: str, message: str, hint: str = "") -> None:
        self.path, self.line, self.text, self.message, self.hint = path, line, text, message, hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        out = f"{where}: {self.message}"
        if self.hint:
            out += f" (expected {self.hint})"
        if self.text:
            out += f"\n    {self.text}"
        return out


class ConfigError(GpuSchedulerError):
    """The config file is missing, not JSON, or fails its schema; `key` is the dotted path."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path, self.key, self.message = path, key, message
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class StateFileError(GpuSchedulerError):
    """The state file cannot be read, validated or written."""


class LaunchError(GpuSchedulerError):
    """A job could not be started (script missing, conda env missing, screen failed)."""


class IllegalTransition(GpuSchedulerError):
    """A job was asked to move between two statuses that the state machine does not connect."""


class ControlError(GpuSchedulerError):
    """The CLI could not talk to the daemon, or the daemon refused the request."""
