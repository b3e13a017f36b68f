"""The status screen and the other views, tested like text (CONVENTIONS practice 10).

Each view is rendered from a fixed state on a colourless, fixed-size rich Console and compared
with tests/unit/snapshots/<name>.txt (trailing spaces stripped). After a deliberate change to
the look, rewrite them with

    GPU_SCHEDULER_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/test_status_render.py

and review the diff by eye before committing it.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console, RenderableType

from gpu_scheduler.core import codec
from gpu_scheduler.core.model import GpuSnapshot
from gpu_scheduler.health import Disk, assess
from gpu_scheduler.report_render import job_table, render_health, render_metrics
from gpu_scheduler.status import build_view, metrics_view
from gpu_scheduler.status_render import StatusScreen
from gpu_scheduler.status_sample import T0, many_jobs_state, sample_state
from gpu_scheduler.status_widgets import job_style, meter, share_bar

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("GPU_SCHEDULER_UPDATE_SNAPSHOTS") == "1"


def render(renderable: RenderableType, width: int, height: int = 25) -> str:
    console = Console(width=width, height=height, color_system=None, force_terminal=False,
                      record=True, file=io.StringIO(), legacy_windows=False, _environ={})  # fmt: skip
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def assert_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"new snapshot {path.name} written: review it and run again")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs (see module doc)"


def sample_view(alive: bool = True, now: float = T0) -> dict:
    return build_view(sample_state(), alive, now)


# ----------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("width", [80, 120])
def test_status_snapshot(width: int) -> None:
    assert_snapshot(f"status_{width}", render(StatusScreen(sample_view()), width))


def test_status_detailed_snapshot() -> None:
    assert_snapshot("status_detailed_80", render(StatusScreen(sample_view(), detailed=True), 80))


def test_status_watch_fits_an_80x24_terminal_snapshot() -> None:
    text = render(StatusScreen(sample_view(), fit_height=True), 80, height=24)
    assert len(text.splitlines()) <= 24
    assert_snapshot("status_watch_80x24", text)


def test_status_daemon_down_snapshot() -> None:
    assert_snapshot("status_down_80", render(StatusScreen(sample_view(alive=False)), 80))


def test_status_stale_snapshot() -> None:
    text = render(StatusScreen(sample_view(now=T0 + 120)), 80)
    assert "● stale" in text and "has not saved for 2m01s" in text
    assert_snapshot("status_stale_80", text)


def test_status_never_started_snapshot() -> None:
    assert_snapshot("status_never_started_80", render(StatusScreen(build_view(None, False, T0)), 80))


def test_unhealthy_gpu_and_a_save_error_snapshot() -> None:
    saved = sample_state()
    gpus = list(saved.observed["gpus"])
    gpus[2] = codec.gpu_snapshot_to_dict(GpuSnapshot(2, healthy=False, error="NVML: GPU is lost"))
    observed = {**saved.observed, "gpus": gpus, "save_error": "No space left on device (ENOSPC)"}
    view = build_view(replace(saved, observed=observed), True, T0)
    text = render(StatusScreen(view), 80)
    assert "STATE NOT SAVED" in text and "NVML: GPU is lost" in text
    assert_snapshot("status_problems_80", text)


def test_list_jobs_snapshot() -> None:
    assert_snapshot("list_jobs_80", render(job_table(sample_view()["jobs"]), 80))


def test_metrics_snapshot() -> None:
    assert_snapshot("metrics_80", render(render_metrics(metrics_view(sample_state(), True, T0)), 80))


def test_health_snapshot() -> None:
    report = assess(sample_view(now=T0 + 120), mode="screen", screen_path=None,
                    disks=[Disk("state and logs", "/srv", 500 << 30, 800 << 20)])  # fmt: skip
    assert report["exit_code"] == 1
    assert_snapshot("health_80", render(render_health(report), 80))


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("width", [60, 72, 80, 99, 100, 132, 200])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    for view in (sample_view(), sample_view(alive=False), build_view(None, False, T0)):
        for detailed in (False, True):
            text = render(StatusScreen(view, detailed=detailed), width)
            assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("height", [18, 24, 30, 40, 60])
def test_watch_screen_fits_the_height(height: int) -> None:
    view = build_view(many_jobs_state(300), True, T0)
    for detailed in (False, True):
        text = render(StatusScreen(view, detailed=detailed, fit_height=True), 80, height)
        assert len(text.splitlines()) <= height, text
        if height >= 30:  # room for every section
            for title in ("GPUs", "Running", "Queue", "Finished", "Line errors"):
                assert title in text
            assert "shown" in text  # says that it left rows out


def test_a_taller_terminal_shows_more_rows() -> None:
    view = build_view(many_jobs_state(300), True, T0)
    short = render(StatusScreen(view, fit_height=True), 80, 30)
    tall = render(StatusScreen(view, fit_height=True), 80, 60)
    assert len(tall.splitlines()) > len(short.splitlines()) + 20


def test_wide_terminals_get_names_pids_and_time_left() -> None:
    narrow, wide = render(StatusScreen(sample_view()), 80), render(StatusScreen(sample_view()), 120)
    assert "A100-SXM4-80GB" in wide and "A100" not in narrow
    assert "31337" in wide and "left)" in wide


# ----------------------------------------------------------------------------- pieces


def test_share_bar_has_a_segment_per_job_in_its_colour() -> None:
    jobs = [{"share_milli": 500, "seq": 1}, {"share_milli": 250, "seq": 2}]
    bar = share_bar(jobs, 8)
    assert bar.plain == "██████░░"
    styles = [(span.start, span.end, str(span.style)) for span in bar.spans]
    assert styles[:2] == [(0, 4, job_style(1)), (4, 6, job_style(2))]


@pytest.mark.parametrize(
    ("shares", "plain"),
    [([1000], "██████████"), ([333, 333, 334], "██████████"), ([125] * 8, "██████████"),
     ([1], "░░░░░░░░░░"), ([], "░░░░░░░░░░")],
)  # fmt: skip
def test_share_bar_totals_are_exact(shares: list[int], plain: str) -> None:
    bar = share_bar([{"share_milli": s, "seq": i} for i, s in enumerate(shares)], 10)
    assert bar.plain == plain


def test_meter_levels_and_unknown() -> None:
    assert meter(None, 5).plain == "·····"
    assert meter(0.01, 5).plain == "█░░░░"  # a little is never shown as nothing
    assert meter(2.0, 5).plain == "█████"
    assert {str(s.style) for s in meter(0.95, 5).spans} >= {"red"}


def test_a_running_jobs_id_has_the_colour_of_its_bar_segment() -> None:
    console = Console(width=80, color_system="truecolor", force_terminal=True,
                      file=io.StringIO(), _environ={})  # fmt: skip
    segments = list(console.render(StatusScreen(sample_view()), console.options))
    colour = {seg.text: seg.style.color.name for seg in segments if seg.style and seg.style.color}
    mmlu = sample_view()["gpus"][0]["jobs"][0]
    assert colour[mmlu["id"]] == job_style(mmlu["seq"])
    bars = {seg.style.color.name for seg in segments
            if seg.style and seg.style.color and set(seg.text) == {"█"}}  # fmt: skip
    assert job_style(mmlu["seq"]) in bars


def test_watch_refuses_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from gpu_scheduler.status_watch import watch

    console = Console(file=io.StringIO(), force_terminal=False, _environ={})
    assert watch(sample_view, interval=1, console=console) == 2
    assert "needs a terminal" in capsys.readouterr().err


def test_a_suspended_job_shows_as_such_and_leaves_its_bar_segment_free() -> None:
    saved = sample_state()
    jobs = list(saved.jobs)
    mmlu = next(j for j in jobs if j.spec.name == "eval-mmlu")
    jobs[jobs.index(mmlu)] = replace(mmlu, status=replace(mmlu.status, suspended=True))
    text = render(StatusScreen(build_view(replace(saved, jobs=tuple(jobs)), True, T0)), 80)
    gpu0 = next(line for line in text.splitlines() if line.startswith("0 "))
    assert "█████░░░░░  0.5" in gpu0 and "eval-mmlu (suspended)" in gpu0
    assert "eval-mmlu (sus" in text.split("Running")[1]  # cut to the job column at 80
