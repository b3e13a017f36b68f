"""The pure scheduling core: no I/O, no threads, no clock reads, no randomness. Time is passed in."""
