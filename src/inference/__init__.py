"""Inference: a run's fold models loaded and run on a split or on photos (flip and multi-scale TTA)."""
