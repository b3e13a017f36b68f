"""Where the daemon keeps its working files, all derived from the state file's location.

Everything lives beside the state file so that two schedulers with two state files never share
anything, and a test's temp folder holds all of its own.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Unix socket paths are limited to 107 bytes; keep a margin.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class DaemonPaths:
    state_file: Path
    log_dir: Path

    @property
    def state_dir(self) -> Path:
        return self.state_file.parent

    @property
    def lock_file(self) -> Path:
        return self.state_file.with_name(self.state_file.name + ".lock")

    @property
    def pid_file(self) -> Path:
        return self.state_file.with_name(self.state_file.stem + ".pid")

    @property
    def run_dir(self) -> Path:
        """Launch specs and the runners' start/exit records, one pair per job attempt."""
        return self.state_dir / "records"

    def record_path(self, job_id: str, attempt: int) -> Path:
        return self.run_dir / f"{job_id}.{attempt}.json"

    def spec_path(self, job_id: str, attempt: int) -> Path:
        return self.run_dir / f"{job_id}.{attempt}.spec.json"

    def log_path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.log"

    @property
    def control_socket(self) -> Path:
        """``<state dir>/control/daemon.sock``, or a short private path when that is too long."""
        preferred = self.state_dir / "control" / "daemon.sock"
        if len(os.fsencode(str(preferred))) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha1(str(self.state_file).encode()).hexdigest()[:16]
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        return base / f"gpu-scheduler-{os.getuid()}" / f"{digest}.sock"
