"""Training: the fold runner, its epoch loop, the two-stage schedule, DDP and checkpoint I/O."""
