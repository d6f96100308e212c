"""Pictures of a prediction: the predicted defect region over the image, and the anomaly map.

`overlay` draws what the paper's qualitative figures show: the predicted region (anomaly map
above the pixel threshold) as a semi-transparent red fill with a solid red outline, and the
ground-truth mask, when there is one, as a green outline. `heatmap` colours an anomaly map
with a matplotlib colour map (no display needed).
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from scipy import ndimage

RED = (255, 0, 0)  # predicted region
GREEN = (0, 255, 0)  # ground-truth outline


def boundary(region: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of `region` (H, W) bool within `width` pixels of its edge, as (H, W) bool.

    Region pixels on the image border count as edge (erosion with border_value=0), so a
    region touching the border is still outlined there.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return region.copy()
    return region & ~ndimage.binary_erosion(region, iterations=width, border_value=0)


def _line_width(height: int, width: int) -> int:
    """Outline width in pixels: 1 up to ~400 px images, thicker for larger ones so it stays visible."""
    return max(1, min(height, width) // 400 + 1)


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    mask: np.ndarray | None = None,
    alpha: float = 0.35,
    line_width: int | None = None,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """The image with the predicted region in red and the ground truth outlined in green.

    image: (H, W, 3) uint8 RGB. anomaly_map: (H, W) float; the predicted region is
    anomaly_map > pixel_threshold. mask: (H, W), nonzero = defect, or None.
    alpha: opacity of the red fill; line_width: outline width in pixels (None: from the size).
    region: (H, W) bool, drawn instead of anomaly_map > pixel_threshold (`Prediction.defect_region`).
    Returns a new (H, W, 3) uint8 image; pixels outside the predicted region and the mask's
    outline are left as they are (green is drawn last, over red where the two meet).
    """
    image = np.asarray(image)
    anomaly_map = np.asarray(anomaly_map)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    if anomaly_map.shape != (height, width):
        raise ValueError(f"anomaly_map: expected shape {(height, width)} like the image, got {anomaly_map.shape}")
    if mask is not None and np.shape(mask) != (height, width):
        raise ValueError(f"mask: expected shape {(height, width)} like the image, got {np.shape(mask)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    line = _line_width(height, width) if line_width is None else int(line_width)

    out = image.copy()
    if region is not None and np.shape(region) != (height, width):
        raise ValueError(f"region: expected shape {(height, width)} like the image, got {np.shape(region)}")
    region = anomaly_map > pixel_threshold if region is None else np.asarray(region, dtype=bool)  # NaN never counts
    if region.any():
        fill = (1.0 - alpha) * image[region].astype(np.float32) + alpha * np.array(RED, np.float32)  # (n, 3)
        out[region] = np.round(fill).astype(np.uint8)
        out[boundary(region, line)] = RED
    if mask is not None:
        out[boundary(np.asarray(mask) != 0, line)] = GREEN
    return out


def heatmap(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "jet"
) -> np.ndarray:
    """(H, W) anomaly map -> (H, W, 3) uint8 colours of `cmap` (any matplotlib colour map name).

    Values are scaled linearly from [vmin, vmax] (default: the map's own finite minimum and
    maximum) to [0, 1] and clipped; a constant map, and NaN values, take the lowest colour.
    """
    values = np.asarray(anomaly_map, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"anomaly_map: expected (H, W), got {values.shape}")
    if cmap not in colormaps:
        raise ValueError(f"cmap: {cmap!r} is not a matplotlib colour map (e.g. jet, magma, viridis, inferno)")
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    span = hi - lo
    scaled = np.clip((values - lo) / span, 0.0, 1.0) if span > 0 else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0)
    rgba = colormaps[cmap](scaled, bytes=True)  # (H, W, 4) uint8
    return np.ascontiguousarray(rgba[..., :3])
