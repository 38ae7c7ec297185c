"""Core: the trainer's config and flags, the targets and metric, user errors, file writing, progress bars, CLI helpers."""
