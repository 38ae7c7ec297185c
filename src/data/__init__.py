"""Data: the Kaggle file contract, folds, datasets and transforms."""
