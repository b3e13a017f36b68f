"""Fixtures for end-to-end tests: a real daemon per test, in screen or direct mode."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import DaemonHarness
from tests.integration.ray_cluster import ray_cluster  # noqa: F401  (session fixture)


@pytest.fixture
def make_daemon(screen_dir: Path) -> Iterator[Callable[..., DaemonHarness]]:
    """Build harnesses (short /tmp roots: screen and unix-socket paths must stay short)."""
    made: list[DaemonHarness] = []
    roots: list[Path] = []

    def factory(mode: str = "screen", gpus: int = 4) -> DaemonHarness:
        root = Path(tempfile.mkdtemp(prefix="gsd-", dir="/tmp"))
        roots.append(root)
        harness = DaemonHarness(root, screen_dir, mode=mode, gpus=gpus)
        made.append(harness)
        return harness

    try:
        yield factory
    finally:
        for harness in made:
            harness.cleanup()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["screen", "direct"])
def daemon(request: pytest.FixtureRequest, make_daemon: Callable[..., DaemonHarness]) -> DaemonHarness:
    """One harness per execution mode: every behavioural test runs in both."""
    return make_daemon(mode=request.param)
