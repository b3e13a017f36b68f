"""The status view (status --json) and the other JSON objects: shape, types, meaning.

docs/status_json.md is the contract: every key it documents must be present with its
documented type, and every key present must be documented.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpu_scheduler.core.model import Pending, Running
from gpu_scheduler.health import Disk, assess
from gpu_scheduler.status import (
    build_view,
    format_duration,
    gpu_share_total,
    job_row,
    metrics_view,
)
from gpu_scheduler.status_sample import T0, job_id, many_jobs_state, sample_state

DOC = Path(__file__).resolve().parents[2] / "docs" / "status_json.md"
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def documented() -> dict[str, dict[str, str]]:
    """``### `path` `` headings and their tables: path -> {key: type}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### `([a-z_.\[\]]+)`", line)
        if heading:
            current = sections.setdefault(heading[1], {})
            continue
        if line.startswith("## ") or line.startswith("### "):
            current = None
        row = re.match(r"^\| `([a-z_0-9]+)` \| ([a-z |\\]+?) \|", line)
        if row and current is not None:
            current[row[1]] = row[2].replace("\\", "")
    return sections


def resolve(doc: Any, path: str) -> list[dict[str, Any]]:
    """Every object at ``a.b[].c`` in ``doc`` (the first name is the command)."""
    objects = [doc]
    for part in path.split(".")[1:]:
        many = part.endswith("[]")
        name = part[:-2] if many else part
        nxt = []
        for obj in objects:
            value = obj[name]
            nxt.extend(value if many else [value])
        objects = nxt
    return objects


def check_against_doc(command: str, doc: Any) -> int:
    """Assert ``doc`` matches every documented section of ``command``; how many objects."""
    sections = {p: keys for p, keys in documented().items() if p.split(".")[0] == command}
    assert sections, f"no sections for {command} in {DOC}"
    checked = 0
    for path, keys in sections.items():
        if path == "metrics.wait_s":
            paths = ["metrics.wait_s", "metrics.run_s", "metrics.queue_wait_s"]
        else:
            paths = [path]
        for p in paths:
            for obj in resolve(doc, p):
                checked += 1
                assert set(obj) == set(keys), (p, set(obj) ^ set(keys))
                for key, type_text in keys.items():
                    allowed = tuple(t for name in type_text.split("|") for t in TYPES[name.strip()])
                    value = obj[key]
                    assert isinstance(value, allowed), (p, key, value, type_text)
                    if isinstance(value, bool) and bool not in allowed:
                        raise AssertionError((p, key, "a bool where a number is documented"))
    return checked


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("name", "saved", "alive"),
    [
        ("sample, up", sample_state(), True),
        ("sample, down", sample_state(), False),
        ("never started", None, False),
    ],
)
def test_status_json_matches_docs_status_json_md(name: str, saved: Any, alive: bool) -> None:
    view = json.loads(json.dumps(build_view(saved, alive, T0)))  # what --json prints
    assert check_against_doc("status", view) >= 4  # status, daemon, counts, queue at least


def test_every_documented_section_is_reached_by_the_sample() -> None:
    view = build_view(sample_state(), True, T0)
    for path in documented():
        if path.startswith("status."):
            assert resolve(view, path), f"the sample has no {path} to check"


def test_metrics_json_matches_docs() -> None:
    for saved, alive in ((sample_state(), True), (None, False)):
        figures = json.loads(json.dumps(metrics_view(saved, alive, T0)))
        assert check_against_doc("metrics", figures) >= 8


def test_health_json_matches_docs() -> None:
    view = build_view(sample_state(), True, T0)
    report = assess(view, mode="screen", screen_path="/usr/bin/screen",
                    disks=[Disk("state and logs", "/", 100 << 30, 50 << 30)])  # fmt: skip
    assert check_against_doc("health", json.loads(json.dumps(report))) == 1 + 5  # 5 checks


def test_list_jobs_rows_are_status_jobs_rows() -> None:
    saved = sample_state()
    view = build_view(saved, True, T0)
    rows = [job_row(j, T0) for j in sorted(saved.jobs, key=lambda j: j.seq)]
    assert rows == view["jobs"]


# ----------------------------------------------------------------------------- meaning


def test_daemon_status_up_down_stale_never_started() -> None:
    saved = sample_state()
    assert build_view(saved, True, T0)["daemon"]["status"] == "up"
    assert build_view(saved, False, T0)["daemon"]["status"] == "down"
    assert build_view(saved, False, T0)["daemon"]["uptime_s"] is None
    later = build_view(saved, True, T0 + 31)["daemon"]
    assert later["status"] == "stale" and later["stale"] and later["heartbeat_age_s"] == 32
    assert build_view(None, False, T0)["daemon"]["status"] == "never_started"


def test_stale_threshold_follows_a_slow_monitor_interval() -> None:
    saved = sample_state()
    slow = replace(saved, daemon={**saved.daemon, "monitor_interval_s": 60.0})
    assert build_view(slow, True, T0 + 100)["daemon"]["status"] == "up"  # < 3 x 60 s
    assert build_view(slow, True, T0 + 200)["daemon"]["status"] == "stale"


def test_gpu_rows_carry_the_shares_of_the_jobs_on_them() -> None:
    view = build_view(sample_state(), True, T0)
    by_index = {g["index"]: g for g in view["gpus"]}
    assert [j["label"] for j in by_index[0]["jobs"]] == ["eval-mmlu", "eval-gsm8k"]
    assert by_index[0]["allocated_milli"] == 1000 and by_index[0]["allocated"] == 1.0
    assert by_index[1]["reserved"] and by_index[3]["paused"] and not by_index[3]["usable"]
    assert gpu_share_total(view) == (2250, 4000)


def test_a_gang_job_appears_on_each_of_its_gpus_with_its_per_gpu_share() -> None:
    saved = sample_state()
    jobs = list(saved.jobs)
    big = next(j for j in jobs if j.spec.name == "eval-32b")
    jobs[jobs.index(big)] = replace(big, status=Running(T0 - 10, (2, 3), 1000, "s", 1))
    view = build_view(replace(saved, jobs=tuple(jobs)), True, T0)
    on = {g["index"]: [j["id"] for j in g["jobs"]] for g in view["gpus"]}
    assert big.job_id in on[2] and big.job_id in on[3]
    assert view["gpus"][3]["allocated_milli"] == 1000


def test_queue_follows_the_daemons_order_then_priority_for_jobs_it_has_not_seen() -> None:
    view = build_view(sample_state(), True, T0)
    q = view["queue"]
    assert q["length"] == 5 and [p["count"] for p in q["by_priority"]] == [1, 3, 1]
    assert q["next"][0]["label"] == "eval-32b" and q["next"][0]["why"].startswith("needs")
    assert q["reserved_for"] == job_id("eval-32b") and q["reserved_gpus"] == [1]
    saved = sample_state()
    no_order = replace(saved, observed={**saved.observed, "queue": []})
    labels = [r["label"] for r in build_view(no_order, True, T0)["queue"]["next"]]
    assert labels == ["eval-32b", "sweep-lr4", "sweep-lr5", "sweep-lr6", "report"]


def test_counts_include_the_archived_history() -> None:
    counts = build_view(sample_state(), True, T0)["counts"]
    assert counts == {"pending": 5, "running": 4, "completed": 39, "failed": 4, "cancelled": 1,
                      "done": 44, "archived": 39}  # fmt: skip
    saved = sample_state()
    old_daemon = replace(saved, observed={k: v for k, v in saved.observed.items()
                                          if k != "metrics"})  # fmt: skip
    counts = build_view(old_daemon, True, T0)["counts"]
    assert counts["completed"] == 2 and counts["archived"] == 39 and counts["done"] == 44


def test_job_rows_by_state() -> None:
    rows = {r["label"]: r for r in build_view(sample_state(), True, T0)["jobs"]}
    run = rows["eval-mmlu"]
    assert run["state"] == "running" and run["gpus"] == [0] and run["pid"] == 31337
    assert run["elapsed_s"] == 42 * 60 + 7 and run["timeout_s"] == 7200
    assert run["session"].startswith("gpujob_0_eval_")
    failed = rows["sweep-lr2"]
    assert (failed["state"], failed["outcome"], failed["exit_code"]) == ("failed", "failed", 1)
    assert failed["run_s"] == 130 and failed["reason"] == "exit 1"
    timed_out = rows["train-1b"]
    assert timed_out["outcome"] == "timed_out" and timed_out["reason"].startswith("timed out")
    pending = rows["report"]
    assert pending["wait_s"] == 480 and pending["gpus"] == [] and pending["exit_code"] is None


def test_default_timeout_applies_to_jobs_without_their_own() -> None:
    saved = sample_state()
    rows = {r["label"]: r for r in build_view(saved, True, T0, default_timeout_s=600)["jobs"]}
    assert rows["eval-gsm8k"]["timeout_s"] == 600 and rows["eval-mmlu"]["timeout_s"] == 7200


def test_odd_observed_sections_do_not_break_the_view() -> None:
    """observed is free-form: an older or newer daemon, or a hand-edited file."""
    saved = sample_state()
    odd = replace(saved, observed={"gpus": [{"index": "x"}, 7, {"index": 1, "name": None}],
                                   "waiting": [], "queue": None, "errors": [3, {"line_no": "7"}],
                                   "unusable": "?", "reserved_gpus": ["a", 2]},
                  daemon={"pid": "not a pid", "heartbeat_at": "later"})  # fmt: skip
    view = json.loads(json.dumps(build_view(odd, True, T0)))
    assert [g["index"] for g in view["gpus"]] == [0, 1, 2]  # 0 and 2: our jobs run there
    assert view["gpus"][0]["healthy"] is False and view["daemon"]["pid"] is None
    assert view["errors"] == [{"source": "", "line_no": None, "text": "", "message": "",
                               "expected": ""}]  # fmt: skip
    assert view["queue"]["reserved_gpus"] == [2]


def test_an_old_state_file_with_line_errors_key_still_shows_its_errors() -> None:
    saved = sample_state()
    observed = {**saved.observed, "line_errors": saved.observed["errors"]}
    del observed["errors"]
    view = build_view(replace(saved, observed=observed), True, T0)
    assert view["errors"][0]["line_no"] == 14


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-3, "0s"), (0.4, "0s"), (59, "59s"), (61, "1m01s"), (3599, "59m59s"),
     (3600, "1h00m"), (86399, "23h59m"), (90000, "1d01h")],
)  # fmt: skip
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_view_of_ten_thousand_jobs_lists_fifty_queued() -> None:
    view = build_view(many_jobs_state(10_000), True, T0)
    assert len(view["jobs"]) == 10_000 and len(view["queue"]["next"]) == 50
    assert view["queue"]["length"] == sum(isinstance(j.status, Pending) for j in
                                          many_jobs_state(10_000).jobs)  # fmt: skip


def test_a_suspended_job_is_listed_but_its_lent_share_is_not_counted() -> None:
    saved = sample_state()
    jobs = list(saved.jobs)
    mmlu = next(j for j in jobs if j.spec.name == "eval-mmlu")
    frozen = replace(mmlu.status, suspended=True, stop_detail="for eval-32b")
    jobs[jobs.index(mmlu)] = replace(mmlu, status=frozen, preemptions=1)
    view = build_view(replace(saved, jobs=tuple(jobs)), True, T0)
    gpu0 = view["gpus"][0]
    assert gpu0["allocated_milli"] == 500
    assert [(j["label"], j["suspended"]) for j in gpu0["jobs"]] == [
        ("eval-mmlu", True), ("eval-gsm8k", False)]  # fmt: skip
    row = next(r for r in view["jobs"] if r["label"] == "eval-mmlu")
    assert row["suspended"] and row["preemptions"] == 1
    assert row["reason"] == "suspended: for eval-32b"


def test_the_oldest_state_file_we_know_still_renders(tmp_path: Path) -> None:
    """tests/data/state_v1.json: an older daemon's observed section (line_errors, no metrics)."""
    import io
    import shutil

    from rich.console import Console

    from gpu_scheduler.adapters.store import StateStore
    from gpu_scheduler.status_render import StatusScreen

    data = Path(__file__).resolve().parents[1] / "data" / "state_v1.json"
    shutil.copy(data, tmp_path / "state.json")
    saved = StateStore(tmp_path / "state.json").read_only_snapshot()
    view = json.loads(json.dumps(build_view(saved, False, saved.saved_at + 60)))
    check_against_doc("status", view)
    assert view["errors"][0]["line_no"] == 7 and view["gpus"][1]["healthy"] is False
    console = Console(width=80, file=io.StringIO(), color_system=None, _environ={})
    console.print(StatusScreen(view))
    check_against_doc("metrics", json.loads(json.dumps(metrics_view(saved, False, T0))))
