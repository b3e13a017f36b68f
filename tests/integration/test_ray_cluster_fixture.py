"""Smoke test of the real two-node Ray cluster fixture (tests/integration/ray_cluster.py)."""

from __future__ import annotations

import re
import sys

import pytest

from tests.integration.ray_cluster import RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_nodes_with_gpus_run_a_fractional_gpu_job(ray_cluster: RayCluster) -> None:
    alive = {n["node_id"]: n for n in ray_cluster.nodes() if n["state"] == "ALIVE"}
    assert alive[ray_cluster.head_node_id]["gpus"] == 4
    assert alive[ray_cluster.head_node_id]["is_head"]
    assert alive[ray_cluster.worker_node_id]["gpus"] == 2
    assert len(alive) == 2

    out = ray_cluster.ray(
        "job", "submit", "--address", ray_cluster.dashboard, "--entrypoint-num-gpus", "0.5",
        "--", sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])",
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^\d$", out.stdout, re.M), out.stdout  # one GPU id (a 0.5 share)
