"""`status --json` as a script runs it: a new process, the documented object on stdout, and none
of the heavy libraries loaded that it does not need (their imports were a third of its time)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.cli_views import _spelled_as_json, compact_json
from gpu_scheduler.core import codec
from gpu_scheduler.status import build_view
from gpu_scheduler.status_sample import T0, many_jobs_state, sample_state

HEAVY = ("jsonschema", "rich", "psutil", "watchdog", "prometheus_client", "pynvml", "GPUtil")

# the CLI, then the heavy modules it loaded, as a JSON list on the last line of stderr
RUN = """
import json, sys
from gpu_scheduler.cli import main
code = main(sys.argv[2:])
sys.stdout.flush()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1].split(","))),
      file=sys.stderr)
raise SystemExit(code)
"""


def write_config(root: Path) -> Path:
    config = root / "config.json"
    files = {"jobs_file": "jobs.txt", "llm_config_file": "llm.json", "state_file": "state.json",
             "log_dir": "logs", "log_file": "scheduler.log"}  # fmt: skip
    config.write_text(json.dumps({"gpu": {"provider": "simulated"}, "files": files}))
    (root / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    return config


def status(root: Path, *args: str) -> tuple[str, list[str]]:
    """stdout of `status ARGS`, and the heavy modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, ",".join(HEAVY), "status", "--config",
         str(root / "config.json"), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def test_status_json_prints_the_view_without_loading_heavy_libraries(tmp_path: Path) -> None:
    write_config(tmp_path)
    saved = sample_state()
    StateStore(tmp_path / "state.json").save(saved)
    out, heavy = status(tmp_path, "--json")
    assert heavy == []
    view = json.loads(out)
    expected = json.loads(json.dumps(build_view(saved, False, view["generated_at"])))
    assert view["counts"] == expected["counts"] and view["queue"]["length"] > 0
    assert [j["id"] for j in view["jobs"]] == [j["id"] for j in expected["jobs"]]
    time_free = ("wait_s", "elapsed_s")  # from the CLI's own clock, a moment apart
    for got, want in zip(view["jobs"], expected["jobs"], strict=True):
        assert {k: v for k, v in got.items() if k not in time_free} == {
            k: v for k, v in want.items() if k not in time_free
        }


def test_a_bad_state_file_still_gets_jsonschemas_words(tmp_path: Path) -> None:
    """The fast checks only ever say "valid"; a bad file is explained exactly as before."""
    write_config(tmp_path)
    StateStore(tmp_path / "state.json").save(sample_state())
    doc = json.loads((tmp_path / "state.json").read_text())
    doc["paused"] = ["one"]
    (tmp_path / "state.json").write_text(json.dumps(doc))
    (tmp_path / "state.json.bak").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "gpu_scheduler", "status", "--json", "--config",
         str(tmp_path / "config.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "paused[0]: 'one' is not of type 'integer'" in done.stderr


def test_a_bad_job_in_the_state_file_is_named_as_before(tmp_path: Path) -> None:
    saved = sample_state()
    StateStore(tmp_path / "state.json").save(saved)
    doc = json.loads((tmp_path / "state.json").read_text())
    doc["jobs"][2]["spec"]["priority"] = "high"
    (tmp_path / "state.json").write_text(json.dumps(doc))
    result = StateStore(tmp_path / "state.json")._try(tmp_path / "state.json")
    assert isinstance(result, str)
    assert result.endswith("jobs[2].spec.priority: 'high' is not of type 'integer'")
    assert codec.jobs_from_dicts(doc["jobs"][:2]) == saved.jobs[:2]


# ----------------------------------------------------------------------------- compact_json

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | finite
    | st.floats(min_value=-1e-3, max_value=1e-3) | st.text(max_size=12)
    | st.text(st.characters(max_codepoint=127), max_size=12)
    | st.sampled_from(["1e-6", "--lr 1e-7,", "0.00001", "-0.00001", "x:0.0000", "a\x7f", "\x01"])
)  # fmt: skip
json_like = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(json_like)
def test_compact_json_writes_exactly_what_json_dumps_writes(value: Any) -> None:
    assert compact_json(value) == json.dumps(value, separators=(",", ":"), default=str)


def test_compact_json_of_a_big_view_is_json_dumps_and_takes_the_fast_path() -> None:
    view = build_view(many_jobs_state(300), False, T0 + 5)
    text = compact_json(view)
    assert text == json.dumps(view, separators=(",", ":"), default=str)
    assert _spelled_as_json(text.encode())  # the fast path's text was used as it is


def test_what_orjson_spells_its_own_way_goes_to_json() -> None:
    for odd in (4.5e-05, -4.5e-05, 2.5e-07, [1e-05], [2.5e-07], ["\u00fc"], {"k": "\u2028"}, [2**70], {1: 2}, ["\udcff"],
                [object()], [Path("/a")], [{"when": datetime(2026, 1, 2, tzinfo=timezone.utc)}]):  # fmt: skip
        assert compact_json(odd) == json.dumps(odd, separators=(",", ":"), default=str)


def test_compact_json_without_orjson_is_json_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson raises ImportError
    view = build_view(sample_state(), False, T0)
    assert compact_json(view) == json.dumps(view, separators=(",", ":"), default=str)


def test_compact_json_spells_floats_of_every_magnitude_as_json_does() -> None:
    rng = random.Random(7)
    values = [rng.uniform(-10, 10) * 10.0 ** rng.randint(-30, 30) for _ in range(20_000)]
    for value in values:
        for doc in (value, [value], {"a": [1, value, "1e-7"]}):
            assert compact_json(doc) == json.dumps(doc, separators=(",", ":"), default=str)
