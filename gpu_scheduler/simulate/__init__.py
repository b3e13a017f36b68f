"""The what-if simulator: replay a workload trace through the real core scheduler on virtual time.

``trace`` reads a CSV trace (or a jobs.txt with one duration estimate) into job specs with
submit times and durations; ``policies`` names the policies compared (each is the core
``Scheduler`` with different ``Policy`` fields and, for whole GPUs, rounded-up shares);
``engine`` is the discrete-event loop; ``report`` computes and renders the figures; ``plot``
draws queue length and utilisation over time (matplotlib, imported only when asked for).
"""

from __future__ import annotations

# Here rather than in policies.py so that building the CLI parser stays cheap.
POLICY_NAMES = ("fractional", "whole-gpu-fifo", "first-fit")
