"""`gpu-scheduler`: the command line. Talks to a running daemon only through its control socket and
the state file; maps every GpuSchedulerError to a one-paragraph message and an exit code.

Exit codes: 0 ok, 1 an error the user can fix (config, jobs file, state, no such job),
2 bad usage, 3 no daemon running (for commands that need one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gpu_scheduler import __version__
from gpu_scheduler.errors import ControlError, GpuSchedulerError

DEFAULT_CONFIG = "configs/config.json"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("GPU_SCHEDULER_CONFIG", DEFAULT_CONFIG),
        help=f"config file (default: $GPU_SCHEDULER_CONFIG or {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-scheduler",
        description="File-driven GPU batch runner: add a line to jobs.txt and walk away.",
    )
    parser.add_argument("--version", action="version", version=f"gpu-scheduler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("start", help="run the scheduler (foreground; Ctrl-C stops it gracefully)")
    _config_arg(p)
    p.add_argument("--daemon", action="store_true", help="detach and run in the background")
    p.add_argument("--mode", choices=["screen", "direct", "ray"], help="override execution.mode")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--reset-state", action="store_true",
                   help="move a bad state file aside and start fresh (jobs.txt is re-read)")

    p = sub.add_parser("stop", help="stop the running daemon gracefully (jobs keep running)")
    _config_arg(p)
    p.add_argument("--kill-jobs", action="store_true", help="also end every running job")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to exit")

    p = sub.add_parser("status", help="GPUs, queue, running and finished jobs")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the documented JSON object")
    p.add_argument("--detailed", action="store_true", help="more rows and columns")
    p.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="--watch refresh seconds")

    p = sub.add_parser("list-jobs", help="jobs as a table or JSON")
    _config_arg(p)
    p.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="include archived history")

    p = sub.add_parser("metrics", help="job counts, wait/run times, throughput, GPU share and use")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the documented JSON object")

    p = sub.add_parser("health", help="daemon, state, GPUs, screen, disk; exit 0 ok/1 degraded/2 down")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the documented JSON object")

    p = sub.add_parser("add", help="append a correctly quoted line to jobs.txt")
    _config_arg(p)
    p.add_argument("script")
    p.add_argument("--args", default="", help='arguments as one string, e.g. "--llm qwen2.5-7b-inst"')
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--env", help="conda environment")
    p.add_argument("--gpus", help="allowed GPUs, e.g. 0-3 or 0,2")
    p.add_argument("--share", type=float, help="GPU share, e.g. 0.5 or 2")
    p.add_argument("--name", help="job name")
    p.add_argument("--timeout", help="e.g. 2h, 30m")
    p.add_argument("--retries", type=int)
    p.add_argument("--jobs-file", help="which jobs file (when jobs_file is a folder or glob)")

    for name, help_text in [("cancel-job", "cancel a pending or running job (ends its process tree)"),
                            ("retry", "queue a finished or failed job again")]:
        p = sub.add_parser(name, help=help_text)
        _config_arg(p)
        p.add_argument("job", help="job id, id prefix or name")

    for name, verb in [("pause-gpu", "pause"), ("resume-gpu", "resume")]:
        p = sub.add_parser(name, help=f"{verb} a GPU (or 'all'): paused GPUs get no new work")
        _config_arg(p)
        p.add_argument("gpu", help="GPU index or 'all'; on Ray also NODE or NODE:K "
                       "(NODE as status shows it, or the start of its node id)")

    p = sub.add_parser("screens", help="list the live job screen sessions")
    _config_arg(p)

    p = sub.add_parser("attach", help="attach to a job's screen session (detach: Ctrl-A D)")
    _config_arg(p)
    p.add_argument("job")

    p = sub.add_parser("logs", help="print a job's log")
    _config_arg(p)
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true")

    p = sub.add_parser("validate", help="check config, jobs files and llm_config; exit 1 on error")
    _config_arg(p)

    sub.add_parser("config-sample", help="print a complete, commented sample config")

    from gpu_scheduler.cli_simulate import add_simulate_parser  # here: it imports this module

    add_simulate_parser(sub, _config_arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    # Commands other than `start` report problems themselves; keep library warnings off stderr.
    logging.getLogger("gpu_scheduler").addHandler(logging.NullHandler())
    from gpu_scheduler import cli_commands

    handler = getattr(cli_commands, "cmd_" + args.command.replace("-", "_"))
    try:
        return int(handler(args) or 0)
    except ControlError as exc:
        print(f"gpu-scheduler: {exc}", file=sys.stderr)
        return 3
    except GpuSchedulerError as exc:
        print(f"gpu-scheduler: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config)
