"""Growth of a predicted area over time, and the wear alert rule that watches it.

Used offline by `pitscope.wear` (a whole sequence at once) and live by the inspection history
(`pitscope.history.alerts`, each new inspection of a part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


def slope_per_day(days: ArrayLike, values: ArrayLike) -> float | None:
    """Least-squares slope of values against days (scipy's linregress), in value units per day;
    None with fewer than 2 distinct days."""
    x, y = np.asarray(days, dtype=np.float64), np.asarray(values, dtype=np.float64)  # (N,), (N,)
    if x.size < 2 or np.ptp(x) == 0:
        return None
    return float(stats.linregress(x, y).slope)


def trailing_growth(days: ArrayLike, values: ArrayLike, window_days: float) -> np.ndarray:
    """(N,) growth per day at each image: `slope_per_day` over the images of the closed window
    [days[i] - window_days, days[i]]; NaN where that window holds fewer than 2 distinct days."""
    x, y = np.asarray(days, dtype=np.float64), np.asarray(values, dtype=np.float64)  # (N,), (N,)
    growth = np.full(x.size, np.nan)
    for i, day in enumerate(x):
        inside = (x >= day - window_days) & (x <= day)
        slope = slope_per_day(x[inside], y[inside])
        growth[i] = np.nan if slope is None else slope
    return growth


def trailing_median(values: ArrayLike, k: int) -> np.ndarray:
    """(N,) the median of each value and the k - 1 before it (fewer at the start of the series)."""
    y = np.asarray(values, dtype=np.float64)  # (N,)
    if k <= 1 or y.size == 0:
        return y.copy()
    return np.array([np.median(y[max(0, i - k + 1) : i + 1]) for i in range(y.size)])


@dataclass(frozen=True)
class AlertRule:
    """Alert on an image when its predicted area is above `area_fraction_above` (a fraction of
    the inspected surface), or when the predicted area grew faster than `growth_per_day_above`
    (fraction of the surface per day: the `trailing_growth` slope over the last `window_days`).
    None switches a part off. With `confirm_images` k > 1 a part alerts only on an image where
    its condition holds on that image and on the k - 1 images before it, so one stray image does
    not alert. The default area, 0.5 % of the surface, is five times the share
    of pixels the pixel threshold lets through on defect-free images at its default quantile
    (0.999); the default growth, 0.1 percentage points a day, is a third of how fast BSData's
    true pitting grows in its steepest days."""

    area_fraction_above: float | None = 0.005
    growth_per_day_above: float | None = 0.001
    window_days: float = 1.0
    confirm_images: int = 1
    smooth_images: int = 1

    def __post_init__(self):
        if self.area_fraction_above is None and self.growth_per_day_above is None:
            raise ValueError("alert rule: give an area or a growth limit (both are off)")
        for name in ("area_fraction_above", "growth_per_day_above"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"alert rule: {name} must be a number >= 0 or off, got {value}")
        if not (math.isfinite(self.window_days) and self.window_days > 0):
            raise ValueError(f"alert rule: window_days must be > 0, got {self.window_days}")
        for name in ("confirm_images", "smooth_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"alert rule: {name} must be a whole number >= 1, got {value!r}")

    def describe(self) -> str:
        parts = []
        if self.area_fraction_above is not None:
            parts.append(f"predicted area above {100 * self.area_fraction_above:.3g}% of the surface")
        if self.growth_per_day_above is not None:
            parts.append(
                f"growing faster than {100 * self.growth_per_day_above:.3g} percentage points a day "
                f"over the last {self.window_days:g} day(s)"
            )
        text = " or ".join(parts)
        if self.smooth_images > 1:
            text = f"{text}, the area being the median of the last {self.smooth_images} images"
        return text if self.confirm_images == 1 else f"{text}, each on {self.confirm_images} images in a row"

    def watched(self, fractions: ArrayLike) -> np.ndarray:
        """(N,) the area the rule watches at each image: the predicted area fractions, each the
        median of its image and the `smooth_images` - 1 before it."""
        return trailing_median(fractions, self.smooth_images)

    def fires(self, days: ArrayLike, fractions: ArrayLike) -> np.ndarray:
        """(N,) bool: the images the rule alerts on, given days and predicted area fractions (in
        the images' order)."""
        area = self.watched(fractions)  # (N,)
        hits = np.zeros(area.size, dtype=np.bool_)
        if self.area_fraction_above is not None:
            hits |= held_in_a_row(area > self.area_fraction_above, self.confirm_images)
        if self.growth_per_day_above is not None:
            growing = trailing_growth(days, area, self.window_days) > self.growth_per_day_above  # NaN: no
            hits |= held_in_a_row(growing, self.confirm_images)
        return hits


def held_in_a_row(holds: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: where `holds` is true on that image and on the k - 1 images before it."""
    out = np.asarray(holds, dtype=np.bool_).copy()
    for back in range(1, k):
        out[back:] &= holds[:-back]
        out[:back] = False
    return out
