"""``after=NAME[;NAME2]``: resolve references to job ids, and reject what can never be satisfied.

A reference is a job id or a ``name=`` of a line in any jobs file, or of a job the scheduler
already knows (its line may be gone after it ran). Unknown references, ambiguous names (several
lines share the name) and cycles are line errors, so a pipeline never waits forever in silence.
A line that depends on a line with an error gets an error too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gpu_scheduler.core.model import JobSpec, LineError

EXPECTED = "after=NAME or after=NAME1;NAME2 naming jobs by name= or id"


@dataclass(frozen=True)
class Resolved:
    specs: tuple[JobSpec, ...]  # the lines whose dependencies all resolve
    errors: tuple[LineError, ...]
    deps: Mapping[str, tuple[str, ...]]  # job id -> ids it waits for


def _error(spec: JobSpec, message: str) -> LineError:
    return LineError(spec.source, spec.line_no, spec.text, message, EXPECTED)


def resolve_dependencies(
    specs: Sequence[JobSpec],
    known_names: Mapping[str, str] | None = None,
    known_ids: Iterable[str] = (),
) -> Resolved:
    """Map every ``after=`` reference to job ids; report unknown, ambiguous and cyclic ones.

    ``known_names``/``known_ids`` describe jobs the scheduler remembers whose lines may be gone.
    """
    ids = {s.job_id for s in specs} | set(known_ids)
    by_name: dict[str, list[str]] = {}
    for spec in specs:
        if spec.name:
            by_name.setdefault(spec.name, []).append(spec.job_id)
    for name, job_id in (known_names or {}).items():
        if name not in by_name:
            by_name[name] = [job_id]

    deps: dict[str, tuple[str, ...]] = {}
    bad: dict[str, str] = {}
    for spec in specs:
        resolved: list[str] = []
        for ref in spec.after:
            if ref in ids:
                resolved.append(ref)
            elif ref in by_name and len(by_name[ref]) == 1:
                resolved.append(by_name[ref][0])
            elif ref in by_name:
                bad[spec.job_id] = f"after={ref}: the name is used by {len(by_name[ref])} jobs"
                break
            else:
                bad[spec.job_id] = f"after={ref}: no job has this name or id"
                break
            if resolved[-1] == spec.job_id:
                bad[spec.job_id] = f"after={ref}: a job cannot wait for itself"
                break
        deps[spec.job_id] = tuple(dict.fromkeys(resolved))

    label = {s.job_id: s.name or s.job_id for s in specs}
    for cycle in _cycles({k: v for k, v in deps.items() if k not in bad}):
        names = " -> ".join(label[j] for j in cycle + [cycle[0]])
        for job_id in cycle:
            bad[job_id] = f"dependency cycle: {names}"

    changed = True
    while changed:  # a line waiting for a bad line can never run either
        changed = False
        for job_id, wanted in deps.items():
            if job_id not in bad:
                broken = [d for d in wanted if d in bad]
                if broken:
                    bad[job_id] = f"depends on {label.get(broken[0], broken[0])}, whose line has an error"
                    changed = True

    by_id = {s.job_id: s for s in specs}
    errors = tuple(_error(by_id[j], msg) for j, msg in bad.items())
    good = tuple(s for s in specs if s.job_id not in bad)
    return Resolved(good, errors, {j: d for j, d in deps.items() if j not in bad and d})


def _cycles(graph: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (iterative: pipelines can be long)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    found: list[list[str]] = []
    for root in graph:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                colour[node] = grey
                path.append(node)
            children = graph.get(node, ())
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                if colour.get(child, black) == grey:
                    found.append(path[path.index(child):])
                elif colour.get(child) == white:
                    stack.append((child, 0))
            else:
                colour[node] = black
                path.pop()
    return found
