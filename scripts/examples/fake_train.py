#!/usr/bin/env python3
"""A stand-in training run: a few 'epochs' with a loss that goes down, and a checkpoint file.

On a restart after preemption (GPU_SCHEDULER_PREEMPTED=1) it resumes from its checkpoint.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--llm", default="unknown-model")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--epoch-seconds", type=float, default=2.0)
args = parser.parse_args()

job = os.environ.get("GPU_SCHEDULER_JOB_ID", "local")
ckpt = Path(tempfile.gettempdir()) / f"fake_train_{job}.json"
start = json.loads(ckpt.read_text())["epoch"] if ckpt.exists() else 0
print(f"training {args.llm} on GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', '')}"
      f" (share {os.environ.get('GPU_SCHEDULER_GPU_SHARE', '?')}), from epoch {start}")
for epoch in range(start, args.epochs):
    time.sleep(args.epoch_seconds)
    print(f"  epoch {epoch + 1}/{args.epochs}  loss {2.0 / (epoch + 1):.3f}", flush=True)
    ckpt.write_text(json.dumps({"epoch": epoch + 1}))
ckpt.unlink(missing_ok=True)
print("done")
