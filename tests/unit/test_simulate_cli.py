"""`gpu-scheduler simulate` end to end, the plot, and scripts/make_trace.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_scheduler.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jobs" / "example_trace.csv"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config with defaults, an llm_config beside it; aging off to keep traces hand-checkable."""
    (tmp_path / "llm_config.json").write_text(
        '{"default_requirement": 1.0, "models": {"qwen2.5-3b-inst": 0.5}}'
    )
    path = tmp_path / "config.json"
    path.write_text('{"scheduler": {"aging": {"interval_s": 0}}}')
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_the_example_trace_as_json_in_a_subprocess() -> None:
    cmd = [sys.executable, "-m", "gpu_scheduler", "simulate", "--trace",
           "jobs/example_trace.csv", "--gpus", "4", "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert list(data["policies"]) == ["fractional", "whole-gpu-fifo", "first-fit"]
    assert data["trace"] == {"path": "jobs/example_trace.csv", "format": "csv", "jobs": 300,
                             "errors": []}  # fmt: skip
    assert data["machine"]["gpus"] == 4
    for figures in data["policies"].values():
        assert figures["makespan_s"] >= data["bounds"]["makespan_lower_bound_s"]
        assert figures["jct_mean_s"] >= data["bounds"]["jct_mean_lower_bound_s"]
        assert 0 < figures["utilisation"] <= figures["held_share"] <= 1


def test_bad_rows_go_to_stderr_and_the_good_rows_are_simulated(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("submit_time,duration_s,gpu_share\n0,10,0.5\n0,-1,0.5\n0,10,9\n0,10,0.5\n")
    code, out, err = run_cli(["simulate", "--config", str(config), "--trace", str(trace),
                              "--gpus", "1", "--json"], capsys)  # fmt: skip
    assert code == 0
    assert f"{trace}:3: duration_s -1 is negative" in err
    assert f"{trace}:4: the job needs 9 GPUs but only 1 is on this machine" in err
    assert "2 bad row(s) skipped" in err
    data = json.loads(out)
    assert data["trace"]["jobs"] == 2
    assert len(data["trace"]["errors"]) == 2
    assert data["policies"]["fractional"]["makespan_s"] == 10
    assert data["policies"]["whole-gpu-fifo"]["makespan_s"] == 20


def test_no_usable_row_exits_1(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("submit_time,gpu_share\n0,1\n")
    code, out, err = run_cli(["simulate", "--config", str(config), "--trace", str(trace)], capsys)
    assert code == 1 and out == ""
    assert f"{trace}:1: the header lacks column duration_s" in err
    assert "no usable job" in err


def test_a_jobs_file_with_a_duration_estimate(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0, /exp/a.py, , --llm qwen2.5-3b-inst\n" * 4)
    args = ["simulate", "--config", str(config), "--trace", str(jobs), "--gpus", "1", "--json"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "give --duration" in err
    code, out, _ = run_cli([*args, "--duration", "30m", "--policy", "whole-gpu-fifo",
                            "--policy", "fractional"], capsys)  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["trace"]["format"] == "jobs.txt"
    assert list(data["policies"]) == ["whole-gpu-fifo", "fractional"]
    # four half-GPU jobs of 30 minutes on one GPU: one hour in pairs, two one by one
    assert data["policies"]["fractional"]["makespan_s"] == 3600
    assert data["policies"]["whole-gpu-fifo"]["makespan_s"] == 7200


def test_preemption_in_the_config_is_accepted_and_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"scheduler": {"preemption": {"enabled": true}}}')
    args = ["simulate", "--config", str(config), "--trace", str(EXAMPLE), "--json",
            "--policy", "fractional"]  # fmt: skip
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    (note,) = json.loads(out)["notes"]
    assert "does not model stopping or freezing a running job yet" in note


def test_the_table_shows_the_policies_side_by_side(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["simulate", "--config", str(config), "--trace", str(EXAMPLE)], capsys)
    assert code == 0
    for word in ("fractional", "whole-gpu-fifo", "first-fit", "lower bound", "makespan",
                 "p95 wait", "longest wait"):  # fmt: skip
        assert word in out


def test_plot_writes_a_png(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is a dev dependency; --plot needs it")
    out_png = tmp_path / "out.png"
    code, _, err = run_cli(["simulate", "--config", str(config), "--trace", str(EXAMPLE),
                            "--json", "--plot", str(out_png)], capsys)  # fmt: skip
    assert code == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000


def test_plot_without_matplotlib_says_how_to_install_it(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code, out, err = run_cli(["simulate", "--config", str(config), "--trace", str(EXAMPLE),
                              "--plot", "x.png"], capsys)  # fmt: skip
    assert code == 1 and out == ""
    assert "--plot needs matplotlib" in err and "pip install matplotlib" in err


def test_bad_usage_exits_2(config: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--config", str(config), "--trace", str(EXAMPLE), "--gpus", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--trace", str(EXAMPLE), "--policy", "lottery"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- make_trace.py


def test_make_trace_writes_a_trace_the_simulator_reads(tmp_path: Path) -> None:
    from gpu_scheduler.simulate.trace import read_trace

    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in paths:
        cmd = [sys.executable, str(ROOT / "scripts" / "make_trace.py"), "--jobs", "200",
               "--seed", "3", "--rate", "10", "--out", str(path)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    assert paths[0].read_bytes() == paths[1].read_bytes()  # same seed, same file
    trace = read_trace(paths[0])
    assert trace.errors == () and len(trace.jobs) == 200
    assert {j.share for j in trace.jobs} <= {250, 500, 1000, 2000, 4000}
    assert {j.spec.priority for j in trace.jobs} <= {0, 1, 2}
    submits = [j.submit_s for j in trace.jobs]
    assert submits == sorted(submits) and submits[0] == 0
    assert all(j.duration_s >= 10 for j in trace.jobs)


def test_the_shipped_example_trace_is_make_trace_with_its_defaults() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "make_trace.py")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    assert done.stdout == EXAMPLE.read_text()
