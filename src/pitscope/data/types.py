"""The record every dataset yields, whatever its on-disk format."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    image: (H, W, 3) uint8 RGB.
    mask:  (H, W) uint8 in {0, 1}; all zero for a defect-free image.
    label: 0 for defect-free, 1 for defective.
    path:  the source file, as a string.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    path: str


class SampleSet(Sequence[Sample]):
    """What every dataset loader returns: `Sample`s by index, plus what is known without decoding.

    has_masks: False when defective images come without masks (pixel metrics unavailable).
    """

    has_masks: bool

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """(N,) int64 labels, 0 defect-free and 1 defective, in dataset order."""

    @property
    @abstractmethod
    def paths(self) -> list[str]:
        """The image paths (or pseudo-paths), in dataset order."""

    def describe(self) -> dict[str, int]:
        """Counts {"total", "normal", "defective"}, from the labels."""
        labels = self.labels
        return {"total": int(labels.size), "normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())}

    @abstractmethod
    def check(self, progress: bool = True) -> list[tuple[str, str]]:
        """Find unreadable files up front; returns [(path, reason), ...] of those skipped."""


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, empty, not an image)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DatasetLayoutError(ValueError):
    """A dataset folder whose layout does not match its format (names the offending path)."""
