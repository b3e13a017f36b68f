"""`gpu-scheduler simulate`: what would the queue look like with this workload on that machine?

Reads a trace (or a jobs.txt plus ``--duration``), replays it through the real core scheduler
under each chosen policy on virtual time, and prints the figures side by side (or as JSON, or as
a plot). Needs no daemon and touches no GPU. Bad rows are reported on stderr with file:line and
the rest runs; the exit code is 1 only when no row is usable.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from gpu_scheduler.cli import config_path, print_json
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.simulate import POLICY_NAMES

if TYPE_CHECKING:
    from gpu_scheduler.config import Settings

MAX_ERRORS_SHOWN = 50


def add_simulate_parser(sub: Any, config_arg: Any) -> None:
    """The ``simulate`` subcommand's arguments (called from cli.build_parser; imports stay light
    here because every command builds the whole parser)."""
    p = sub.add_parser("simulate", help="what-if: replay a workload trace under each policy")
    config_arg(p)
    p.add_argument(
        "--trace",
        required=True,
        help="CSV trace (submit_time,duration_s,gpu_share|num_gpus[,priority,tenant,"
        "name]) or a jobs.txt (with --duration)",
    )
    p.add_argument("--gpus", type=_count, help="GPUs to simulate (default: gpu.simulated.count)")
    p.add_argument(
        "--gpu-memory-mb",
        type=_count,
        help="memory per simulated GPU (default: gpu.simulated.memory_mb)",
    )
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICY_NAMES,
        default=[],
        help="policy to compare; repeat for several (default: all)",
    )
    p.add_argument(
        "--duration",
        type=_duration,
        help="for a jobs.txt: the run time of every line, e.g. 30m, 2h",
    )
    p.add_argument("--json", action="store_true", help="print the documented JSON object")
    p.add_argument("--plot", metavar="OUT.png", help="draw queue length and utilisation over time")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 4096, got {text!r}")
    return value


def _duration(text: str) -> float:
    from gpu_scheduler.core.jobfile import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return seconds


def notes_for(settings: Settings) -> list[str]:
    """Config settings the simulation accepts but does not model (yet)."""
    notes = []
    if settings.scheduler.preemption.enabled:
        notes.append(
            "scheduler.preemption is enabled in the config, but the simulator does not model "
            "stopping or freezing a running job yet; every policy was simulated without it"
        )
    return notes


def cmd_simulate(args: argparse.Namespace) -> int:
    from gpu_scheduler.config import load_settings
    from gpu_scheduler.llmconfig import load_llm_config
    from gpu_scheduler.policy import policy_from
    from gpu_scheduler.simulate import engine, report
    from gpu_scheduler.simulate.policies import make_policies
    from gpu_scheduler.simulate.trace import read_trace

    settings = load_settings(config_path(args))
    gpus = args.gpus or settings.gpu.simulated.count
    memory = args.gpu_memory_mb or settings.gpu.simulated.memory_mb
    if args.plot:
        from gpu_scheduler.simulate.plot import require_matplotlib

        require_matplotlib()
    trace = read_trace(
        args.trace,
        unit=settings.gpu.precision_unit,
        duration_s=args.duration,
        llm_table=lambda: load_llm_config(settings.files.llm_config_file),
        gpu_count=gpus,
    )
    jobs, too_big = engine.unplaceable(trace.jobs, gpus)
    errors = sorted([*trace.errors, *too_big], key=lambda e: e.line_no)
    _print_problems([str(e) for e in errors], list(trace.warnings))
    if not jobs:
        print(f"gpu-scheduler: no usable job in {args.trace}", file=sys.stderr)
        return 1
    sims = make_policies(args.policy, policy_from(settings))
    runs = [engine.run(jobs, sim, gpus, memory) for sim in sims]
    data = report.build_report(trace, runs, gpus, memory,
                               errors=[str(e).split("\n")[0] for e in errors],
                               notes=[*trace.warnings, *notes_for(settings)])  # fmt: skip
    if args.json:
        print_json(data)
    else:
        _print_table(data)
    if args.plot:
        from gpu_scheduler.simulate.plot import write_plot

        write_plot(runs, args.plot, title=f"{len(jobs)} jobs on {gpus} GPUs: {args.trace}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _print_problems(errors: list[str], warnings: list[str]) -> None:
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in errors[:MAX_ERRORS_SHOWN]:
        print(line, file=sys.stderr)
    if len(errors) > MAX_ERRORS_SHOWN:
        print(f"... and {len(errors) - MAX_ERRORS_SHOWN} more", file=sys.stderr)
    if errors:
        print(f"{len(errors)} bad row(s) skipped; the other rows were simulated", file=sys.stderr)


def _print_table(data: dict[str, Any]) -> None:
    from rich.console import Console

    from gpu_scheduler.simulate.report import render_notes, render_table, render_title

    console = Console()
    console.print(render_title(data), highlight=False, markup=False)
    console.print(render_table(data))
    for line in render_notes(data):
        console.print(line, highlight=False, markup=False)


__all__ = ["GpuSchedulerError", "add_simulate_parser", "cmd_simulate"]
