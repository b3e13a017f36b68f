"""Jobs, statuses, GPU snapshots and line errors to JSON-safe dicts and back, exactly.

Why a hand-written codec rather than ``dataclasses.asdict``: the state file must survive the
code changing under it, so its shape is spelled out here, once, and every value read back is
checked. A decoder never trusts its input: a wrong type, a missing key or an unknown key raises
``DecodeError`` (a ``ValueError``) naming the field path, e.g. ``jobs[3].status.gpus[0]: 'x' is
not of type 'integer'`` (jsonschema's wording, so schema and codec complaints read alike).

Shape: tuples become lists, ``None`` stays ``null``, every field is written (defaults too, so a
file is self-describing); on reading, fields that have a default in the dataclass may be left out
(hand-written files stay short). A status and an outcome carry a ``"kind"`` tag. Encoding then
decoding gives back an equal object; floats must be finite (JSON has no NaN), which the caller's
``json.dumps(..., allow_nan=False)`` enforces.

Pure: no I/O, stdlib only. Callers import from here; the writing half is ``codec_encode``, the
checked reading half ``codec_decode``, and the fast path for saved jobs ``codec_fast``.
"""

from __future__ import annotations

from gpu_scheduler.core import codec_fast
from gpu_scheduler.core.codec_decode import (
    Check,
    DecodeError,
    gpu_snapshot_from_dict,
    job_from_dict,
    line_error_from_dict,
    outcome_from_dict,
    spec_from_dict,
    status_from_dict,
)
from gpu_scheduler.core.codec_encode import (
    gpu_snapshot_to_dict,
    job_to_dict,
    line_error_to_dict,
    outcome_to_dict,
    spec_to_dict,
    status_to_dict,
)
from gpu_scheduler.core.codec_fast import jobs_from_dicts

__all__ = [
    "Check", "DecodeError", "gpu_snapshot_from_dict", "gpu_snapshot_to_dict", "job_from_dict",
    "job_to_dict", "jobs_from_dicts", "line_error_from_dict", "line_error_to_dict",
    "outcome_from_dict", "outcome_to_dict", "spec_from_dict", "spec_to_dict", "status_from_dict",
    "status_to_dict",
]  # fmt: skip

# The old private names, for tests that read them (aliases: to switch the fast path off,
# patch codec_fast._FAST).
_FAST = codec_fast._FAST
_common_job = codec_fast._common_job
