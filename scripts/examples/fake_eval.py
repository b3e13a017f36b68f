#!/usr/bin/env python3
"""A stand-in LLM evaluation: prints what it was given and a progress bar for a few seconds.

Shows what a real job sees: its GPUs (CUDA_VISIBLE_DEVICES), its share and its job id.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--llm", default="unknown-model")
parser.add_argument("--seconds", type=float, default=5.0)
parser.add_argument("--fail", action="store_true", help="exit 1 at the end")
args = parser.parse_args()

print(f"evaluating {args.llm}")
for key in ("CUDA_VISIBLE_DEVICES", "GPU_SCHEDULER_GPU_SHARE", "GPU_SCHEDULER_JOB_ID"):
    print(f"  {key}={os.environ.get(key, '')}")
steps = 20
colour = sys.stdout.isatty()
for i in range(steps + 1):
    bar = "#" * i + "." * (steps - i)
    line = f"\r  [{bar}] {100 * i // steps:3d}%"
    sys.stdout.write(f"\033[32m{line}\033[0m" if colour else line)
    sys.stdout.flush()
    time.sleep(args.seconds / steps)
print(f"\n  accuracy: {0.5 + (hash(args.llm) % 40) / 100:.2f}")
sys.exit(1 if args.fail else 0)
