"""Packaging: the offline Kaggle dataset of a run and the inference it runs on Kaggle."""
