"""Datasets that ship with installed packages, so training needs no network."""
from __future__ import annotations

import numpy as np


def load_digits_split(test_size: float = 0.25, seed: int = 0):
    """scikit-learn's 8×8 handwritten digits (1797 samples, 10 classes), pixels scaled to
    [0, 1], split into a stratified, seeded train and test set.

    Returns ``(X_train, X_test, y_train, y_test)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
