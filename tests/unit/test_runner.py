"""The runner, run for real as a subprocess: environment, argv, tty, exit codes, launch
failures, log and signals. Each test's processes are ended by pid in teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpu_scheduler import runner as runner_module
from gpu_scheduler.adapters.launchers import read_record, runner_argv
from tests.conftest import PidTracker
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]

REPORT_JOB = """\
import json, os, sys
print("\\033[32mhello from the job\\033[0m", flush=True)
keys = [k for k in os.environ if k.startswith(("CUDA_", "GPU_SCHEDULER_", "EXTRA_"))]
json.dump({
    "argv": sys.argv[1:],
    "env": {k: os.environ[k] for k in keys},
    "tty": [f.isatty() for f in (sys.stdin, sys.stdout, sys.stderr)],
    "cwd": os.getcwd(),
}, open("report.json", "w"))
"""

SLEEPER_JOB = """\
import time
print("ready", flush=True)
time.sleep(60)
"""


def make_spec(tmp_path: Path, script: str, **overrides: Any) -> Path:
    spec = {
        "job_id": "job-1",
        "attempt": 1,
        "session": "gs-test-job-1",
        "script": script,
        "args": [],
        "conda_env": None,
        "gpus": [0],
        "share": "1",
        "log_path": str(tmp_path / "logs" / "job-1.log"),
        "record_path": str(tmp_path / "run" / "job-1.1.json"),
        "cwd": str(tmp_path),
        "python": sys.executable,
        "env": {},
        "append_cuda_arg": False,
        **overrides,
    }
    (tmp_path / "run").mkdir(exist_ok=True)
    path = tmp_path / "run" / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def write_job(tmp_path: Path, name: str, text: str, executable: bool = False) -> str:
    path = tmp_path / name
    path.write_text(text)
    if executable:
        path.chmod(0o755)
    return name


def start_runner(
    spec: Path, pids: PidTracker, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The runner as the launchers start it: group leader, no terminal, stdin at EOF."""
    proc = subprocess.Popen(
        runner_argv(sys.executable, spec),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    pids.add(proc.pid)
    return proc


def run_runner(spec: Path, pids: PidTracker, env: dict[str, str] | None = None) -> int:
    proc = start_runner(spec, pids, env)
    proc.communicate(timeout=60)
    return proc.returncode


def record(tmp_path: Path) -> dict[str, Any]:
    found = read_record(tmp_path / "run" / "job-1.1.json")
    assert found is not None, "the runner wrote no record"
    return found


def log_text(tmp_path: Path) -> str:
    path = tmp_path / "logs" / "job-1.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_job_gets_its_gpus_env_and_literal_args_on_a_tty(tmp_path: Path, pids: PidTracker) -> None:
    args = ["a b; rm -rf ~", "$(touch pwned)", '"quoted"', "*", ""]
    script = write_job(tmp_path, "report.py", REPORT_JOB)
    spec = make_spec(
        tmp_path,
        script,
        args=args,
        gpus=[1, 3],
        share="0.5",
        attempt=2,
        env={"EXTRA_FLAG": "yes"},
        append_cuda_arg=True,
        record_path=str(tmp_path / "run" / "job-1.1.json"),
    )

    assert run_runner(spec, pids) == 0

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["argv"] == [*args, "--cuda", "1,3"]
    assert not (tmp_path / "pwned").exists()
    assert report["env"] == {
        "CUDA_VISIBLE_DEVICES": "1,3",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPU_SCHEDULER_JOB_ID": "job-1",
        "GPU_SCHEDULER_GPU_SHARE": "0.5",
        "GPU_SCHEDULER_ATTEMPT": "2",
        "EXTRA_FLAG": "yes",
    }
    assert report["tty"] == [True, True, True]
    assert report["cwd"] == str(tmp_path)
    done = record(tmp_path)
    assert done["state"] == "exited" and done["exit_code"] == 0
    assert done["job_pid"] != done["runner_pid"]
    assert done["started_at"] <= done["finished_at"]
    log = log_text(tmp_path)
    assert "\x1b[32mhello from the job\x1b[0m\n" in log  # colours kept, no \r added


def test_runner_start_time_matches_psutil(tmp_path: Path, pids: PidTracker) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "sleeper.py", SLEEPER_JOB))
    runner = start_runner(spec, pids)
    started = wait_until(lambda: read_record(tmp_path / "run" / "job-1.1.json"))
    assert started["state"] == "started"
    assert started["runner_pid"] == runner.pid
    assert abs(started["runner_started_at"] - psutil.Process(runner.pid).create_time()) < 0.05
    runner.terminate()
    runner.communicate(timeout=30)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("raise SystemExit(0)", 0),
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
    ],
    ids=["zero", "three", "killed-by-signal"],
)
def test_exit_code_is_recorded_and_returned(
    tmp_path: Path, pids: PidTracker, body: str, expected: int
) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "job.py", body + "\n"))
    assert run_runner(spec, pids) == expected
    assert record(tmp_path)["exit_code"] == expected


def test_executable_runs_without_a_shell(tmp_path: Path, pids: PidTracker) -> None:
    script = write_job(
        tmp_path, "job.sh", '#!/bin/sh\nfor a in "$@"; do echo "<$a>"; done\nexit 4\n', True
    )
    spec = make_spec(tmp_path, script, args=["a b; echo pwned", "$(id)", "*"])
    assert run_runner(spec, pids) == 4
    assert "<a b; echo pwned>\n<$(id)>\n<*>\n" in log_text(tmp_path)


def test_stdin_is_at_end_of_file_so_a_prompt_cannot_hang(tmp_path: Path, pids: PidTracker) -> None:
    body = "try:\n    input('continue? ')\nexcept EOFError:\n    raise SystemExit(7)\n"
    spec = make_spec(tmp_path, write_job(tmp_path, "ask.py", body))
    assert run_runner(spec, pids) == 7


def test_missing_script_is_a_launch_failure(tmp_path: Path, pids: PidTracker) -> None:
    spec = make_spec(tmp_path, "no_such_script.py")
    assert run_runner(spec, pids) == 127
    failed = record(tmp_path)
    assert failed["state"] == "launch_failed"
    assert "script not found: no_such_script.py" in failed["message"]
    assert "exit_code" not in failed
    assert "launch failed: script not found" in log_text(tmp_path)


def test_script_without_execute_permission_is_a_launch_failure(
    tmp_path: Path, pids: PidTracker
) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "job.sh", "#!/bin/sh\nexit 0\n"))
    assert run_runner(spec, pids) == 127
    assert "not executable" in record(tmp_path)["message"]


def test_missing_conda_is_a_launch_failure(tmp_path: Path, pids: PidTracker) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "job.py", "pass\n"), conda_env="ml")
    env = {k: v for k, v in os.environ.items() if k != "CONDA_EXE"}
    env["PATH"] = "/usr/bin:/bin"
    assert run_runner(spec, pids, env) == 127
    failed = record(tmp_path)
    assert failed["state"] == "launch_failed"
    assert "conda not found" in failed["message"]


FAKE_CONDA = """\
#!/bin/sh
# Answers `conda env list --json`; `conda run -n ENV --no-capture-output CMD...` runs CMD.
if [ "$1" = env ]; then echo '{"envs": ["/opt/conda", "/opt/conda/envs/ml"]}'; exit 0; fi
if [ "$1" = run ] && [ "$2" = -n ] && [ "$4" = --no-capture-output ]; then
  shift 4; echo "env=$3" > conda_used; exec "$@"
fi
exit 99
"""


@pytest.mark.parametrize(("conda_env", "expected"), [("ml", 0), ("nope", 127)])
def test_conda_env_is_checked_then_used(
    tmp_path: Path, pids: PidTracker, conda_env: str, expected: int
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_job(bin_dir, "conda", FAKE_CONDA, executable=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = write_job(tmp_path, "report.py", REPORT_JOB)
    spec = make_spec(tmp_path, script, conda_env=conda_env, args=["x y"])
    env = {k: v for k, v in os.environ.items() if k != "CONDA_EXE"}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"

    assert run_runner(spec, pids, env) == expected

    if expected == 0:
        assert json.loads((tmp_path / "report.json").read_text())["argv"] == ["x y"]
    else:
        assert "conda env not found: nope" in record(tmp_path)["message"]


def test_sigterm_to_the_runner_stops_the_job_and_is_recorded(
    tmp_path: Path, pids: PidTracker
) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "sleeper.py", SLEEPER_JOB))
    runner = start_runner(spec, pids)
    wait_until(lambda: "ready" in log_text(tmp_path), what="the job to start")
    job_pid = pids.add(record(tmp_path)["job_pid"])

    os.kill(runner.pid, signal.SIGTERM)
    runner.communicate(timeout=30)

    assert runner.returncode == 128 + signal.SIGTERM
    done = record(tmp_path)
    assert done["state"] == "exited" and done["exit_code"] == 128 + signal.SIGTERM
    assert not psutil.pid_exists(job_pid) or psutil.Process(job_pid).status() == "zombie"


def test_runs_as_python_dash_m(tmp_path: Path, pids: PidTracker) -> None:
    spec = make_spec(tmp_path, write_job(tmp_path, "job.py", "raise SystemExit(5)\n"))
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_scheduler.runner", str(spec)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        start_new_session=True,
    )
    assert proc.returncode == 5
    assert record(tmp_path)["exit_code"] == 5


def test_unreadable_spec_exits_2(tmp_path: Path, pids: PidTracker) -> None:
    assert run_runner(tmp_path / "missing.json", pids) == 2


COUNT_SIGINT_JOB = """\
import os, select, signal, time
r, w = os.pipe()
os.set_blocking(w, False)
signal.signal(signal.SIGINT, lambda s, f: None)
signal.set_wakeup_fd(w)  # one byte per delivery, written by the C-level handler
print("ready", flush=True)
select.select([r], [], [], 30)
time.sleep(0.3)  # a second delivery would land in this time
open("count", "w").write(str(len(os.read(r, 100))))
"""


@pytest.mark.parametrize("how", ["ctrl-c-on-its-terminal", "kill"])
def test_sigint_reaches_the_job_once_and_the_run_is_recorded(
    tmp_path: Path, pids: PidTracker, how: str
) -> None:
    """As in screen: the runner leads a session whose terminal is its stdin/stdout. ^C typed
    there signals the whole foreground group itself, so the runner must not pass it on."""
    import pty

    spec = make_spec(tmp_path, write_job(tmp_path, "count.py", COUNT_SIGINT_JOB))
    argv = runner_argv(sys.executable, spec)
    pid, master = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execv(argv[0], argv)
    pids.add(pid)
    try:
        wait_until(lambda: "ready" in log_text(tmp_path), what="the job to start")
        if how == "kill":
            os.kill(pid, signal.SIGINT)
        else:
            os.write(master, b"\x03")
        wait_until(lambda: (tmp_path / "count").exists(), what="the job to count")
        assert (tmp_path / "count").read_text() == "1"
        assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid)
        assert record(tmp_path)["exit_code"] == 0
    finally:
        os.close(master)


def test_records_are_json_that_json_reads_back() -> None:
    value = {"b": [1, 2.5, None, True], "a": 'q"uo\\te\n\u00e9\U0001f600', "t": 1795456665.65}
    text = runner_module.dumps(value)
    assert json.loads(text) == value
    assert runner_module.loads(text) == value
    assert runner_module.loads(json.dumps(value, indent=2) + "\n") == value
    with pytest.raises(ValueError):
        runner_module.loads('{"a": 1} trailing')
