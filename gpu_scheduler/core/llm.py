"""How big a share a job gets when it does not say ``gpus=``: the llm_config table.

Pure. A job names its model with ``--llm``/``--model`` in its arguments; the table maps model names
to GPU counts (floats, as users write them). The one float→share conversion goes through
``units.share_from_gpus`` so every source of a share is rounded the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpu_scheduler.core.model import JobSpec
from gpu_scheduler.core.units import ONE_GPU, share_from_gpus


@dataclass(frozen=True)
class LlmTable:
    """Model name → GPUs needed, plus the requirement for jobs that name no known model.

    ``models`` may be given as a mapping or pairs; it is stored as a sorted tuple of pairs so the
    table stays hashable and immutable. Lookup is exact first, then case-insensitive (when two
    keys differ only by case, the first in sorted order wins; ``check_llm_config`` reports that).
    """

    default_requirement: float = 1.0
    models: tuple[tuple[str, float], ...] = ()
    _exact: dict[str, float] = field(init=False, repr=False, compare=False, hash=False)
    _folded: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __init__(
        self,
        default_requirement: float = 1.0,
        models: Mapping[str, float] | Iterable[tuple[str, float]] = (),
    ) -> None:
        pairs = models.items() if isinstance(models, Mapping) else models
        ordered = tuple(sorted((str(k), float(v)) for k, v in pairs))
        object.__setattr__(self, "default_requirement", float(default_requirement))
        object.__setattr__(self, "models", ordered)
        object.__setattr__(self, "_exact", dict(ordered))
        folded: dict[str, str] = {}
        for key, _ in ordered:
            folded.setdefault(key.casefold(), key)
        object.__setattr__(self, "_folded", folded)

    def match(self, name: str) -> str | None:
        """The table key that ``name`` refers to (exact, then case-insensitive), if any."""
        if name in self._exact:
            return name
        return self._folded.get(name.casefold())

    def lookup(self, name: str) -> float | None:
        """GPUs for model ``name`` (exact, then case-insensitive); None if the table lacks it."""
        key = self.match(name)
        return None if key is None else self._exact[key]


def _requested_gpus(spec: JobSpec, table: LlmTable) -> tuple[float, str]:
    if spec.share is not None:
        return spec.share / ONE_GPU, "gpus="
    if spec.llm is not None:
        key = table.match(spec.llm)
        gpus = None if key is None else table.lookup(key)
        if gpus is not None:
            return gpus, f"llm_config: {key}"
    return table.default_requirement, "default_requirement"


def resolve_share(spec: JobSpec, table: LlmTable, unit: int) -> int:
    """The job's total share in milli-GPU, rounded to ``unit`` (the allocation precision).

    Order: the line's ``gpus=``, else the table entry for its ``--llm``/``--model``, else
    ``default_requirement``. Raises ValueError only if the table holds a non-positive number.
    """
    gpus, _ = _requested_gpus(spec, table)
    return share_from_gpus(gpus, unit)


def share_source(spec: JobSpec, table: LlmTable) -> str:
    """Where the share came from, for status and ``validate``: ``gpus=``,
    ``llm_config: <key>`` or ``default_requirement``.
    """
    return _requested_gpus(spec, table)[1]
