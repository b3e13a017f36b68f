"""A real two-node Ray cluster for integration tests, inside a private network namespace.

Why a namespace: on Linux Ray swaps 127.0.0.1 for the machine's primary address, and a second
node on one machine is refused unless everything binds loopback; inside a namespace that has only
``lo`` Ray resolves to 127.0.0.1, and its default ports (6379, 8265, ...) cannot clash with another
Ray cluster running in the root namespace. See ../shared/notes/ray-local-cluster.md.

Layout: head node with 4 logical GPUs and 2 CPUs, worker node with 2 GPUs and 1 CPU, GCS on
127.0.0.1:6379 and dashboard / Jobs API on http://127.0.0.1:8265 - reachable only from inside the
namespace, so everything a test starts (the daemon, its CLI, Ray clients) goes through
``RayCluster.popen`` / ``RayCluster.run`` / ``RayCluster.run_python``.

Teardown never runs ``ray stop``: it kills every process on the machine whose name matches
(raylet, gcs_server, ...), including another cluster's, and it deletes /tmp/ray/ray_current_cluster.
Instead the processes of *this* cluster are found by their network namespace (``ip netns pids``,
re-checked by namespace inode before each signal) and ended by pid; then the namespace and the
temp dir are removed. An atexit hook covers a crashed session, and the next session removes
namespaces left by a session that was killed outright (their owner pid is in the name).

Use from tests in tests/integration (the fixture is imported by conftest.py)::

    @pytest.mark.slow
    @pytest.mark.ray
    def test_x(ray_cluster: RayCluster) -> None:
        proc = ray_cluster.popen([sys.executable, "-m", "gpu_scheduler", "start", ...])
        out = ray_cluster.run([sys.executable, "-m", "gpu_scheduler", "status", "--json", ...],
                              timeout=30)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RAY_MISSING = "Ray is not installed: pip install 'gpu-scheduler[ray]'"
NETNS_PREFIX = "gsray-"  # gsray-<owner pid>-<random>: lets a later session spot orphans
HEAD_GPUS, HEAD_CPUS = 4, 2
WORKER_GPUS, WORKER_CPUS = 2, 1
GCS_ADDRESS = "127.0.0.1:6379"
DASHBOARD = "http://127.0.0.1:8265"
START_TIMEOUT = 90.0  # both nodes ALIVE with their GPUs; ~11 s when idle
# Ray's socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must fit in 107 bytes.
MAX_TEMP_DIR_LEN = 45

# Every process in the namespace gets these (and never a leaked client address or the
# single-node switch, which refuses the second node).
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
UNSET_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")

# Fixed ports for the second node: it shares the namespace's loopback with the head.
WORKER_PORTS = [
    "--node-manager-port=7011", "--object-manager-port=7012",
    "--dashboard-agent-listen-port=7013", "--dashboard-agent-grpc-port=7014",
    "--runtime-env-agent-port=7015", "--metrics-export-port=7016",
    "--min-worker-port=21000", "--max-worker-port=21999",
]

# Runs inside the namespace: poll the state API until the ALIVE nodes carry the expected GPU
# totals (or just once), print them as JSON. argv: dashboard, timeout, expected totals JSON.
_NODES_SNIPPET = """\
import json, sys, time
from ray.util.state import list_nodes
address, timeout, want = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
deadline, nodes, error = time.monotonic() + timeout, [], ""
while True:
    try:
        nodes = [
            {"node_id": n.node_id, "is_head": bool(n.is_head_node), "state": n.state,
             "gpus": (n.resources_total or {}).get("GPU", 0),
             "cpus": (n.resources_total or {}).get("CPU", 0)}
            for n in list_nodes(address=address, timeout=10, raise_on_missing_output=False)
        ]
        error = ""
    except Exception as exc:  # dashboard not up yet
        error = repr(exc)
    alive = sorted(n["gpus"] for n in nodes if n["state"] == "ALIVE")
    if want is None or alive == sorted(want):
        print(json.dumps(nodes)); sys.exit(0)
    if time.monotonic() > deadline:
        print(json.dumps(nodes)); print(error, file=sys.stderr); sys.exit(1)
    time.sleep(0.5)
"""


class RayClusterError(RuntimeError):
    """The cluster did not come up; the message carries ``ray status`` and ray start output."""


def ray_cli() -> str:
    """The ``ray`` script next to this interpreter (the venv's)."""
    return str(Path(sys.executable).with_name("ray"))


def skip_reason() -> str | None:
    """Why a real cluster cannot run here, or None."""
    if importlib.util.find_spec("ray") is None or not Path(ray_cli()).exists():
        return RAY_MISSING
    if os.geteuid() != 0:
        return "a real Ray cluster needs root (to create a network namespace with `ip netns add`)"
    if shutil.which("ip") is None:
        return "a real Ray cluster needs iproute2 (`ip netns`): apt-get install iproute2"
    return None


def netns_command(netns: str, argv: Sequence[str], temp_dir: Path | None = None) -> list[str]:
    """``argv`` run inside ``netns`` with the cluster environment. With ``temp_dir`` (named
    ``ray``), RAY_TMPDIR points at its parent so Ray's default temp dir (``ray.init("auto")``,
    ray_current_cluster, ...) is the cluster's, never /tmp/ray."""
    unset = [arg for name in UNSET_ENV for arg in ("-u", name)]
    values = dict(CLUSTER_ENV)
    if temp_dir is not None:
        values["RAY_TMPDIR"] = str(temp_dir.parent)
    env = [f"{k}={v}" for k, v in values.items()]
    return ["ip", "netns", "exec", netns, "env", *unset, *env, *map(str, argv)]


def netns_pids(netns: str) -> list[int]:
    """Pids of processes in ``netns`` (``ip netns pids``); empty when it is gone."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def _in_netns(pid: int, netns: str) -> bool:
    """Is ``pid`` still in ``netns`` (guards against pid reuse between listing and signalling)."""
    try:
        mine = os.stat(f"/proc/{pid}/ns/net")
        ns = os.stat(f"/run/netns/{netns}")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (ns.st_dev, ns.st_ino)


def kill_netns_processes(netns: str, grace: float = 0.0, timeout: float = 20.0) -> list[int]:
    """SIGTERM every process in ``netns``, SIGKILL what survives ``grace`` seconds (default 0:
    SIGKILL at once, as ``ray stop --force``; gcs_server, raylet and the agents ignore SIGTERM
    for > 3 s anyway), until none is left (new children may appear meanwhile); the pids
    signalled. Raises if some survive."""
    signalled: set[int] = set()
    start = time.monotonic()
    while True:
        pids = [p for p in netns_pids(netns) if _in_netns(p, netns)]
        if not pids:
            return sorted(signalled)
        sig = signal.SIGTERM if time.monotonic() - start < grace else signal.SIGKILL
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"processes survive in netns {netns}: {pids}")
        for pid in pids:
            if _in_netns(pid, netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    signalled.add(pid)
        time.sleep(0.2)


def delete_netns(netns: str) -> None:
    """End this namespace's processes, then delete it (idempotent)."""
    if not Path(f"/run/netns/{netns}").exists():
        return
    kill_netns_processes(netns)
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True, text=True)


def remove_orphan_namespaces() -> list[str]:
    """Delete ``gsray-<pid>-*`` namespaces whose owning test session is dead (killed outright,
    so neither teardown nor atexit ran). Namespaces of live sessions are left alone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if not name.startswith(NETNS_PREFIX) or len(parts) != 3 or not parts[1].isdigit():
            continue
        owner = int(parts[1])
        if owner == os.getpid() or Path(f"/proc/{owner}").exists():
            continue
        delete_netns(name)
        removed.append(name)
    return removed


@dataclass
class RayCluster:
    """A running two-node cluster in network namespace ``netns``."""

    netns: str
    temp_dir: Path
    head_node_id: str = ""
    worker_node_id: str = ""
    gcs_address: str = GCS_ADDRESS
    dashboard: str = DASHBOARD
    _stopped: bool = field(default=False, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full ``ip netns exec NS env ... argv`` command line."""
        return netns_command(self.netns, argv, self.temp_dir)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside the namespace (e.g. the daemon under test). Teardown kills it
        with the cluster if the test did not."""
        return subprocess.Popen(self.command(argv), **kw)

    def run(self, argv: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace to completion; output captured as text by default."""
        if not {"stdout", "stderr", "capture_output"} & kw.keys():
            kw["capture_output"] = True
        kw.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout, **kw)

    def run_python(self, code: str, *args: str, timeout: float = 60, **kw: Any
                   ) -> subprocess.CompletedProcess:
        """Run a python snippet (this interpreter) inside the namespace."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout, **kw)

    def ray(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI inside the namespace, e.g. ``cluster.ray("status")``."""
        return self.run([ray_cli(), *args], timeout=timeout, **kw)

    def nodes(self, wait_for_gpus: list[float] | None = None, timeout: float = 30
              ) -> list[dict[str, Any]]:
        """Nodes as ``{node_id, is_head, state, gpus, cpus}`` from the state API. With
        ``wait_for_gpus`` polls until the ALIVE nodes' GPU totals are exactly those."""
        out = self.run_python(_NODES_SNIPPET, self.dashboard, str(timeout),
                              json.dumps(wait_for_gpus), timeout=timeout + 30)
        try:
            nodes = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            nodes = None
        if out.returncode != 0 or nodes is None:
            raise RayClusterError(
                f"nodes not as expected (GPU totals {wait_for_gpus}) after {timeout:.0f} s: "
                f"{out.stdout.strip()} {out.stderr.strip()[-2000:]}\n{self.status_text()}"
            )
        return nodes

    def node_ids(self) -> list[str]:
        """Ids of the ALIVE nodes now, head first."""
        alive = [n for n in self.nodes() if n["state"] == "ALIVE"]
        return [n["node_id"] for n in sorted(alive, key=lambda n: not n["is_head"])]

    def pids(self) -> list[int]:
        """Pids of every process in the namespace (the cluster and whatever tests started)."""
        return netns_pids(self.netns)

    def rss_bytes(self) -> int:
        """Total resident memory of the processes in the namespace."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def status_text(self) -> str:
        """``ray status`` output, for error messages."""
        try:
            out = self.ray("status", f"--address={self.gcs_address}", timeout=30)
            return f"ray status (rc {out.returncode}):\n{out.stdout}{out.stderr}"
        except subprocess.TimeoutExpired:
            return "ray status timed out"

    def stop(self) -> None:
        """End every process in the namespace by pid, delete the namespace and the temp dir.
        Idempotent; never touches processes outside the namespace."""
        if self._stopped:
            return
        self._stopped = True
        try:
            delete_netns(self.netns)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if self.temp_dir.parent.name.startswith("rc-"):  # the /tmp fallback
                shutil.rmtree(self.temp_dir.parent, ignore_errors=True)


def _short_temp_dir(base: Path | None) -> Path:
    """A fresh ``<base>/ray`` when short enough for Ray's socket paths, else ``/tmp/rc-*/ray``."""
    if base is None or len(str(base / "ray")) > MAX_TEMP_DIR_LEN:
        base = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    path = base / "ray"
    path.mkdir(parents=True, exist_ok=False)
    return path


def start_ray_cluster(base: Path | None = None, timeout: float = START_TIMEOUT) -> RayCluster:
    """Create the namespace, start head and worker, wait until both are ALIVE with 4 and 2 GPUs.
    On any failure everything started so far is torn down and RayClusterError is raised."""
    remove_orphan_namespaces()
    temp_dir = _short_temp_dir(base)
    netns = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    cluster = RayCluster(netns=netns, temp_dir=temp_dir)
    atexit.register(cluster.stop)  # a crashed session still removes the namespace
    try:
        cluster.run(["ip", "link", "set", "lo", "up"], timeout=10, check=True)
        common = [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        starts = [
            ["start", "--head", f"--port={GCS_ADDRESS.rsplit(':', 1)[1]}",
             f"--num-gpus={HEAD_GPUS}", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", "--dashboard-port=8265", *common],
            ["start", f"--address={GCS_ADDRESS}", f"--num-gpus={WORKER_GPUS}",
             f"--num-cpus={WORKER_CPUS}", *WORKER_PORTS, *common],
        ]
        for args in starts:
            # stdout to a file, not a pipe: ray start leaves daemons holding inherited fds.
            with tempfile.TemporaryFile("w+") as log:
                try:
                    rc = cluster.run([ray_cli(), *args], timeout=timeout, stdout=log,
                                     stderr=subprocess.STDOUT).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    log.seek(0)
                    raise RayClusterError(f"ray {' '.join(args)} failed ({rc}):\n"
                                          f"{log.read()[-4000:]}\n{cluster.status_text()}")
        nodes = cluster.nodes(wait_for_gpus=[HEAD_GPUS, WORKER_GPUS], timeout=timeout)
        for node in nodes:
            if node["state"] != "ALIVE":
                continue
            if node["is_head"]:
                cluster.head_node_id = node["node_id"]
            else:
                cluster.worker_node_id = node["node_id"]
        if not (cluster.head_node_id and cluster.worker_node_id):
            raise RayClusterError(f"cannot tell head from worker: {nodes}")
    except BaseException:
        cluster.stop()
        atexit.unregister(cluster.stop)
        raise
    return cluster


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A real two-node Ray cluster (head 4 GPUs, worker 2 GPUs) for the whole session, in its
    own network namespace; skipped without ray, root or iproute2."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_ray_cluster(tmp_path_factory.mktemp("rc"))
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
