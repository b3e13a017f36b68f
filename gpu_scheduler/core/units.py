"""GPU shares as integer milli-GPU (1000 = one whole GPU).

Integers make per-GPU sums exact: no over-commit can creep in through float drift. This module is
the one place where a user's float (``gpus=0.5``, ``"qwen2.5-3b": 0.5``) becomes a share.
"""

from __future__ import annotations

import math

ONE_GPU = 1000


def precision_milli(allocation_precision: float) -> int:
    """The rounding unit in milli-GPU for a config's ``allocation_precision`` (a GPU fraction)."""
    unit = round(allocation_precision * ONE_GPU)
    if unit < 1:
        raise ValueError(f"allocation_precision {allocation_precision} is below 0.001")
    return unit


def share_from_gpus(gpus: float, unit: int = 1) -> int:
    """Round a GPU count (e.g. 0.5, 2, 0.125) to the nearest multiple of `unit` milli-GPU.

    Exact ties round down (0.125 at unit 10 becomes 0.12, so eight still fit on one GPU);
    a positive request never rounds to zero: it gets at least one unit.
    """
    if not math.isfinite(gpus) or gpus <= 0:
        raise ValueError(f"a GPU share must be a positive number, not {gpus}")
    milli = gpus * ONE_GPU
    units = math.ceil(milli / unit - 0.5 - 1e-9)
    return max(unit, units * unit)


def gpus_needed(share: int) -> int:
    """How many GPUs a share spans: 1 up to one GPU, else ceil(share / 1000)."""
    return max(1, -(-share // ONE_GPU))


def share_per_gpu(share: int) -> int:
    """The share each GPU of a gang gets: share / k rounded up, so the gang never gets less."""
    k = gpus_needed(share)
    return -(-share // k)


def format_share(share: int) -> str:
    """0.5, 2, 0.125: the shortest exact decimal for a milli-GPU share."""
    whole, rest = divmod(share, ONE_GPU)
    if rest == 0:
        return str(whole)
    return f"{whole}.{rest:03d}".rstrip("0")
