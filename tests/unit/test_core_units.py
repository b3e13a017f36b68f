"""Shares as integer milli-GPU: the one place a user's float becomes a share, and back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu_scheduler.core.units import (
    ONE_GPU,
    format_share,
    gpus_needed,
    precision_milli,
    share_from_gpus,
    share_per_gpu,
)

# The allocation_precision values a config may hold (they divide one GPU evenly), in milli-GPU.
UNITS = [1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000]


# --------------------------------------------------------------------------- share_from_gpus


@pytest.mark.parametrize(
    ("gpus", "unit", "share"),
    [
        (0.5, 1, 500),
        (1, 1, 1000),
        (2, 5, 2000),
        (0.3, 1, 300),  # 0.3 * 1000 is 300.00000000000006 in floats
        (0.1, 5, 100),
        (0.33, 10, 330),
        (0.334, 10, 330),
        (0.336, 10, 340),
        (1.5, 250, 1500),
        (0.6, 250, 500),  # 2.4 units -> 2
        (0.7, 250, 750),  # 2.8 units -> 3
    ],
)
def test_share_from_gpus_rounds_to_the_nearest_unit(gpus: float, unit: int, share: int) -> None:
    assert share_from_gpus(gpus, unit) == share


@pytest.mark.parametrize(
    ("gpus", "unit", "share"),
    [
        (0.125, 10, 120),  # so eight 0.125 jobs still fit one GPU at precision 0.01
        (0.135, 10, 130),
        (0.145, 10, 140),
        (0.0025, 5, 0),  # a tie at the bottom still gets one unit (see below)
        (0.375, 250, 250),
        (0.625, 250, 500),
        (0.0125, 5, 10),
    ],
)
def test_share_from_gpus_rounds_exact_ties_down(gpus: float, unit: int, share: int) -> None:
    assert share_from_gpus(gpus, unit) == max(unit, share)


@pytest.mark.parametrize(("gpus", "unit"), [(0.0001, 1), (0.001, 5), (0.002, 10), (0.1, 250)])
def test_a_positive_request_never_rounds_to_zero(gpus: float, unit: int) -> None:
    assert share_from_gpus(gpus, unit) == unit


@pytest.mark.parametrize("gpus", [0, -0.5, -1, math.nan, math.inf, -math.inf])
def test_share_from_gpus_rejects_non_positive_or_non_finite(gpus: float) -> None:
    with pytest.raises(ValueError, match="positive number"):
        share_from_gpus(gpus)


@given(units=st.integers(1, 8000), unit=st.sampled_from(UNITS))
def test_a_share_that_is_already_a_multiple_of_the_unit_is_kept_exactly(
    units: int, unit: int
) -> None:
    share = units * unit
    assert share_from_gpus(share / ONE_GPU, unit) == share


@given(gpus=st.floats(0.0005, 64, allow_nan=False), unit=st.sampled_from(UNITS))
def test_share_from_gpus_is_a_multiple_of_the_unit_within_half_a_unit(
    gpus: float, unit: int
) -> None:
    share = share_from_gpus(gpus, unit)
    assert share % unit == 0
    assert share >= unit
    if gpus * ONE_GPU >= unit:
        assert abs(share - gpus * ONE_GPU) <= unit / 2 + 1e-6


@pytest.mark.parametrize(
    ("precision", "unit"), [(0.001, 1), (0.005, 5), (0.01, 10), (0.25, 250), (1, 1000)]
)
def test_precision_milli(precision: float, unit: int) -> None:
    assert precision_milli(precision) == unit


def test_precision_below_one_milli_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="below 0.001"):
        precision_milli(0.0004)


# --------------------------------------------------------------------------- gangs


@pytest.mark.parametrize(
    ("share", "k"),
    [(1, 1), (500, 1), (1000, 1), (1001, 2), (1500, 2), (2000, 2), (2001, 3), (4000, 4)],
)
def test_gpus_needed_is_one_up_to_a_whole_gpu_then_the_ceiling(share: int, k: int) -> None:
    assert gpus_needed(share) == k


@pytest.mark.parametrize(
    ("share", "per"),
    [(500, 500), (1000, 1000), (1001, 501), (1500, 750), (2500, 834), (4000, 1000)],
)
def test_share_per_gpu_splits_evenly_rounding_up(share: int, per: int) -> None:
    assert share_per_gpu(share) == per


@given(share=st.integers(1, 64 * ONE_GPU))
def test_a_gang_never_gets_less_than_its_share_nor_more_than_a_gpu_each(share: int) -> None:
    k, per = gpus_needed(share), share_per_gpu(share)
    assert 0 < per <= ONE_GPU
    assert share <= k * per < share + k  # rounded up by less than one milli-GPU per GPU
    assert k == max(1, math.ceil(share / ONE_GPU))


# --------------------------------------------------------------------------- format_share


@pytest.mark.parametrize(
    ("share", "text"),
    [
        (500, "0.5"),
        (125, "0.125"),
        (5, "0.005"),
        (50, "0.05"),
        (1000, "1"),
        (2000, "2"),
        (1050, "1.05"),
        (2500, "2.5"),
        (0, "0"),
    ],
)
def test_format_share_is_the_shortest_exact_decimal(share: int, text: str) -> None:
    assert format_share(share) == text


@given(share=st.integers(1, 64 * ONE_GPU))
def test_format_share_round_trips_through_share_from_gpus(share: int) -> None:
    text = format_share(share)
    assert share_from_gpus(float(text)) == share
    assert "." not in text or not text.endswith(("0", "."))  # no trailing zeros
