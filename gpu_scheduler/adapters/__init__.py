"""Adapters: one outside thing each (GPUs, processes, files, clock), each with a fake beside it."""
