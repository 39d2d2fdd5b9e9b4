"""scikit-learn's 8x8 handwritten digits: embedded in the wheel, so smoke runs need no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oracle_kd.data.types import DataBundle, ImageSet
from oracle_kd.errors import ConfigError

# The split never follows the run seed: every run, whatever its seed, is scored on the same held-out images.
SPLIT_SEED = 0


def load_digits_bundle(root: str | Path | None = None, *, seed: int = 0, test_fraction: float = 0.25) -> DataBundle:
    """1797 images, 1x8x8, values 0..16 rescaled to uint8 0..255; a fixed stratified train/test split.

    `root` and `seed` are accepted for a uniform loader signature and ignored (see SPLIT_SEED).
    mean/std come from the train split only, so no test statistics leak into normalization.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"dataset.test_fraction={test_fraction!r}: must be in (0, 1)")
    raw = load_digits()
    pixels = np.rint(raw.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = raw.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                           random_state=SPLIT_SEED, stratify=y)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    def subset(idx: np.ndarray) -> ImageSet:
        return ImageSet(torch.from_numpy(np.ascontiguousarray(pixels[idx])), torch.from_numpy(y[idx].copy()))

    scaled = pixels[train_idx].astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in scaled.std(axis=(0, 2, 3)))
    return DataBundle(name="digits", train=subset(train_idx), test=subset(test_idx), num_classes=10,
                      in_channels=1, image_size=8, mean=mean, std=std, class_names=[str(i) for i in range(10)])
