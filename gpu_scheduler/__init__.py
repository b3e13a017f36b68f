"""gpu_scheduler: a file-driven GPU batch runner with fractional GPU shares and GNU screen sessions."""

__version__ = "0.1.0"
