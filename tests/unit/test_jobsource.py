"""The jobs files seen together: tenants by file, jobs that can never run, after= across files."""

from __future__ import annotations

import json
from pathlib import Path

from gpu_scheduler.jobsource import JobSource, with_dependencies


def make_source(tmp_path: Path, files: dict[str, str], **kw: object) -> JobSource:
    folder = tmp_path / "jobs"
    folder.mkdir()
    (tmp_path / "job.py").write_text("")
    for name, text in files.items():
        (folder / name).write_text(text)
    llm = tmp_path / "llm.json"
    llm.write_text(json.dumps({"default_requirement": 1, "models": {"small": 0.5}}))
    source = JobSource(str(folder / "*.txt"), llm, gpu_indices=range(4), precision_unit=5,
                       **kw)  # type: ignore[arg-type]
    source.reload_llm()
    return source


def test_each_file_is_a_tenant_and_after_resolves_across_files(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    source = make_source(tmp_path, {
        "alice.txt": f"0,{job},,--llm small,name=prep\n",
        "bob.txt": f"0,{job},,--x,after=prep\n",
    })
    result = with_dependencies(source.read(), {}, ())
    tenants = {spec.tenant: spec for spec, _ in result.jobs}
    assert set(tenants) == {"alice", "bob"} and not result.errors
    assert result.deps == {tenants["bob"].job_id: (tenants["alice"].job_id,)}


def test_a_job_over_its_tenants_cap_is_a_line_error_not_a_job_waiting_forever(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    source = make_source(tmp_path, {"alice.txt": f"0,{job},,,gpus=2\n0,{job},,,gpus=1\n"},
                         tenant_caps={"alice": 1.0})
    result = source.read()
    assert [share for _, share in result.jobs] == [1000]
    (error,) = result.errors
    assert error.line_no == 1 and error.source.endswith("alice.txt")
    assert error.message == "job can never run here: share 2 is over tenant alice's max_gpus (1)"
