"""``after=NAME[;NAME2]``: resolve references to job ids, and reject what can never be satisfied.

A reference is a job id or a ``name=`` of a line in any jobs file, or of a job the scheduler
already knows (its line may be gone after it ran). Unknown references, ambiguous names (several
lines share the name) and cycles are line errors, so a pipeline never waits forever in silence.
A line that depends on a line with an error gets an error too.

``AppendResolver`` gives the same answer for a jobs file that is re-read again and again, at the
cost of the appended lines only (see its docstring); ``resolve_dependencies`` is the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
    _mark_unrunnable(deps, bad, label)

    by_id = {s.job_id: s for s in specs}
    errors = tuple(_error(by_id[j], msg) for j, msg in bad.items())
    good = tuple(s for s in specs if s.job_id not in bad)
    return Resolved(good, errors, {j: d for j, d in deps.items() if j not in bad and d})


def _mark_unrunnable(
    deps: Mapping[str, tuple[str, ...]],
    bad: dict[str, str],
    label: Mapping[str, str],
    bad_before: Collection[str] = (),
) -> None:
    """Add to ``bad`` the lines in a dependency cycle, then every line waiting (transitively)
    for a bad line, or one in ``bad_before``: none of them can ever run."""
    for cycle in _cycles({k: v for k, v in deps.items() if k not in bad}):
        chain = " -> ".join(label[j] for j in cycle + [cycle[0]])
        for job_id in cycle:
            bad[job_id] = f"dependency cycle: {chain}"
    changed = True
    while changed:
        changed = False
        for job_id, wanted in deps.items():
            if job_id not in bad:
                broken = [d for d in wanted if d in bad or d in bad_before]
                if broken:
                    named = label.get(broken[0], broken[0])
                    bad[job_id] = f"depends on {named}, whose line has an error"
                    changed = True


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


# ------------------------------------------------------------------------------ re-reading

Pair = tuple[JobSpec, int]  # a line's spec and its share (milli-GPU)


@dataclass(frozen=True)
class ResolvedPairs:
    """``resolve_dependencies`` over (spec, share) pairs; ``good`` holds the very pair objects
    given. ``unchanged``: the first that many ``good`` pairs are the same objects, with the same
    ``deps``, as the previous answer's (a caller may keep what it worked out for them)."""

    good: tuple[Pair, ...]
    errors: tuple[LineError, ...]
    deps: Mapping[str, tuple[str, ...]]
    unchanged: int = 0


@dataclass
class _Index:
    """What the previous lines look like to a new line, and what would change their answer."""

    ids: set[str]
    names: dict[str, list[str]]  # name= of the lines only (not the scheduler's known jobs)
    refs: set[str]  # every after= reference of every line
    outside: dict[str, tuple[str, str | None]]  # ref naming no line -> what it meant then
    bad: set[str] = field(default_factory=set)


class AppendResolver:
    """``resolve_dependencies`` for lines that mostly grow at the end (a jobs file appended to).

    Exactly the reference's answer, at the cost of the new lines when:

    * no line has ``after=``: nothing to resolve, every line is good (no lookups at all);
    * lines were only appended, none of them is named (by id or ``name=``) in an old line's
      ``after=``, no old reference to a job outside the lines changed meaning (the scheduler's
      known jobs are looked at for those references only), no job id repeats, and not both old
      and new lines have errors (the reference lists errors by kind, then line: merging two
      lists would reorder them).

    Anything else resolves every line again with ``resolve_dependencies``. ``known_names`` is
    called only when a reference needs it (building it costs a walk over every known job).
    Not thread-safe; pure (no I/O).
    """

    def __init__(self) -> None:
        self._input: tuple[Pair, ...] = ()
        self._after = 0  # how many input lines have after=
        self._out = ResolvedPairs((), (), {})
        self._index: _Index | None = None  # None: not built (no after= yet, or repeated ids)

    def resolve(
        self,
        pairs: tuple[Pair, ...],
        unchanged: int,
        known_names: Callable[[], Mapping[str, str]],
        known_ids: Collection[str],
    ) -> ResolvedPairs:
        """Resolve ``pairs``, whose first ``unchanged`` are the previous call's very objects."""
        prev = self._input
        if not 0 <= unchanged <= len(prev) or (
            unchanged and pairs[unchanged - 1] is not prev[unchanged - 1]
        ):
            unchanged = 0
        gone = sum(1 for spec, _ in prev[unchanged:] if spec.after) if unchanged else self._after
        self._after += sum(1 for spec, _ in pairs[unchanged:] if spec.after) - gone
        appended = unchanged == len(prev)
        self._input = pairs
        if not self._after:  # no line to resolve: each is good, with no deps
            old = self._out
            if old.good is not prev:  # the last answer resolved lines: count what it kept
                same = 0
                for a, b in zip(pairs[:unchanged], old.good, strict=False):
                    if a is not b or old.deps.get(a[0].job_id):
                        break
                    same += 1
                unchanged = same
            self._index = None
            self._out = ResolvedPairs(pairs, (), {}, unchanged)
            return self._out
        names = _Lazy(known_names)
        if appended and self._index is not None:
            out = self._append(pairs[unchanged:], names, known_ids)
            if out is not None:
                self._out = out
                return out
        return self._resolve_all(pairs, names, known_ids)

    def _resolve_all(
        self, pairs: tuple[Pair, ...], names: _Lazy, known_ids: Collection[str]
    ) -> ResolvedPairs:
        specs = [spec for spec, _ in pairs]
        resolved = resolve_dependencies(specs, names(), known_ids)
        good: list[Pair] = []
        wanted = iter(resolved.specs)  # a subsequence of specs, in order
        nxt = next(wanted, None)
        for pair in pairs:
            if pair[0] is nxt:
                good.append(pair)
                nxt = next(wanted, None)
        old = self._out
        same = 0
        for a, b in zip(good, old.good, strict=False):
            job_id = a[0].job_id
            if a is not b or resolved.deps.get(job_id, ()) != old.deps.get(job_id, ()):
                break
            same += 1
        self._out = ResolvedPairs(tuple(good), resolved.errors, resolved.deps, same)
        ids = {spec.job_id for spec in specs}
        if len(ids) != len(specs):
            self._index = None  # a repeated id: only the reference knows what that means
            return self._out
        index = _Index(ids, {}, set(), {}, ids - {spec.job_id for spec, _ in good})
        for spec in specs:
            if spec.name:
                index.names.setdefault(spec.name, []).append(spec.job_id)
            index.refs.update(spec.after)
        for ref in index.refs - ids:
            index.outside[ref] = _meaning(ref, index.names, known_ids, names)
        self._index = index
        return self._out

    def _append(
        self, new: tuple[Pair, ...], names: _Lazy, known_ids: Collection[str]
    ) -> ResolvedPairs | None:
        """The previous answer plus the new lines', or None when that might differ from the
        reference's answer for all lines."""
        index = self._index
        assert index is not None
        specs = [spec for spec, _ in new]
        new_ids = {spec.job_id for spec in specs}
        if len(new_ids) != len(specs) or not new_ids.isdisjoint(index.ids):
            return None
        for spec in specs:
            if spec.job_id in index.refs or (spec.name and spec.name in index.refs):
                return None  # an old line's after= may mean something else now
        for ref, meant in index.outside.items():
            if _meaning(ref, index.names, known_ids, names) != meant:
                return None
        added: dict[str, list[str]] = {}
        for spec in specs:
            if spec.name:
                added.setdefault(spec.name, []).append(spec.job_id)

        def owners(name: str) -> list[str] | None:
            mine = index.names.get(name, []) + added.get(name, [])
            if mine:
                return mine
            known = names().get(name)
            return None if known is None else [known]

        deps: dict[str, tuple[str, ...]] = {}
        bad: dict[str, str] = {}
        for spec in specs:
            found: list[str] = []
            for ref in spec.after:  # the reference's order: ids, then names, then known names
                if ref in index.ids or ref in new_ids or ref in known_ids:
                    found.append(ref)
                else:
                    who = owners(ref)
                    if who is None:
                        bad[spec.job_id] = f"after={ref}: no job has this name or id"
                        break
                    if len(who) > 1:
                        bad[spec.job_id] = f"after={ref}: the name is used by {len(who)} jobs"
                        break
                    found.append(who[0])
                if found[-1] == spec.job_id:
                    bad[spec.job_id] = f"after={ref}: a job cannot wait for itself"
                    break
            deps[spec.job_id] = tuple(dict.fromkeys(found))
        label = {s.job_id: s.name or s.job_id for s in specs}
        _mark_unrunnable(deps, bad, label, index.bad)
        if bad and index.bad:
            return None
        by_id = {s.job_id: s for s in specs}
        errors = tuple(_error(by_id[j], msg) for j, msg in bad.items())
        good = tuple(pair for pair in new if pair[0].job_id not in bad)
        index.ids.update(new_ids)
        for name, owners_ in added.items():
            index.names.setdefault(name, []).extend(owners_)
        for spec in specs:
            for ref in spec.after:
                index.refs.add(ref)
                if ref not in index.ids and ref not in index.outside:
                    index.outside[ref] = _meaning(ref, index.names, known_ids, names)
        index.bad.update(bad)
        old = self._out
        all_deps = dict(old.deps)
        all_deps.update((j, d) for j, d in deps.items() if j not in bad and d)
        return ResolvedPairs(old.good + good, old.errors + errors, all_deps, len(old.good))


class _Lazy:
    """The scheduler's known names, built on first use only."""

    def __init__(self, build: Callable[[], Mapping[str, str]]) -> None:
        self._build = build
        self._value: Mapping[str, str] | None = None

    def __call__(self) -> Mapping[str, str]:
        if self._value is None:
            self._value = self._build()
        return self._value


def _meaning(
    ref: str, names: Mapping[str, list[str]], known_ids: Collection[str], known: _Lazy
) -> tuple[str, str | None]:
    """What a reference naming no line's id resolves through, as the reference would see it."""
    if ref in known_ids:
        return ("id", None)
    if ref in names:
        return ("name", None)
    return ("known", known().get(ref))
