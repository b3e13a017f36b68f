"""`python -m gpu_scheduler` is the same as the `gpu-scheduler` command."""

from gpu_scheduler.cli import main

raise SystemExit(main())
