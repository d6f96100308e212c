"""The built-in `synthetic` dataset: procedural ball-screw photographs with pitting.

It lets the demo train and evaluate with no download. The renderer imitates the BSData
photographs (a threaded spindle filling the frame, its axis vertical, thread lands running
almost horizontally across the image): a helical thread profile wrapped on a cylinder, shaded
as polished steel reflecting a few soft lights, with machining marks along the thread.
Pitting is added as small dark, ragged cavities, preferably on the thread flanks.

Every image is a pure function of (seed, index): the dataset never touches the global RNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image
from scipy import ndimage

from pitscope.config import DataConfig
from pitscope.data.types import Sample, SampleSet
from pitscope.tensors import resize_image

# Samples of one thread period in the profile look-up table.
PROFILE_SAMPLES = 512
# Split names and the stream that keeps their seeds apart.
SPLIT_STREAMS = {"train": 0, "test": 1, "val": 2}


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _thread_profile(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One period of a ball-screw thread in axial section, as (height, slope) tables.

    A broad, gently convex land (the wide bright band of the photographs) is followed by a
    narrow, steep groove that reflects little light (the dark line between bands). Height is
    in units of the period; the slope (d height / d u) is what bends the surface normal. The
    table is blurred a little, as the optics blur edges.

    Returns: two (PROFILE_SAMPLES,) float arrays over u in [0, 1).
    """
    u = np.arange(PROFILE_SAMPLES) / PROFILE_SAMPLES
    land = rng.uniform(0.6, 0.75)
    crown = rng.uniform(0.04, 0.08) * land  # land bulge; its slope shades the band's gradient
    crest = rng.uniform(0.3, 0.7)  # where along the land the bulge peaks
    depth = rng.uniform(0.1, 0.18)
    t_land = u / land
    bulge = np.where(t_land < crest, t_land / crest, (1.0 - t_land) / (1.0 - crest))
    t = np.clip((u - land) / (1.0 - land), 0.0, 1.0)  # 0..1 across the groove
    groove = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, 1.0))
    height = np.where(u < land, crown * np.sqrt(np.clip(bulge * (2.0 - bulge), 0.0, 1.0)), -depth * groove)
    height = ndimage.gaussian_filter1d(height, sigma=PROFILE_SAMPLES * 0.008, mode="wrap")
    slope = np.gradient(np.concatenate([height[-1:], height, height[:1]]))[1:-1] * PROFILE_SAMPLES
    return height, slope


def _streaks(rng: np.random.Generator, n_across: int, n_along: int) -> np.ndarray:
    """Machining marks: noise that is fine across the thread and long along it.

    Rows index the position across the thread (one per pixel), columns the angle around the
    spindle. A sparse envelope makes a few rows into deeper scratches.

    Returns: (n_across, n_along) float, about unit variance.
    """
    fine = ndimage.gaussian_filter(rng.standard_normal((n_across, n_along)), (0.7, n_along / 6), mode="wrap")
    envelope = 0.6 + 2.0 * (rng.random((n_across, 1)) < 0.02)
    out = fine * envelope
    return out / (out.std() + 1e-8)


def render_surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Render one defect-free ball-screw photograph.

    Geometry: a cylinder (axis vertical, filling nearly the whole width, background at the
    sides) carries a helical thread; a point at angle theta around the axis projects to
    x = xc + R sin(theta), and the thread phase there is u = (y + pitch * theta / 2pi
    + bow * cos(theta) + tilt * (x - xc)) / pitch, which gives the tilt and curvature of real
    threads and their steepening at the silhouette. Shading (Phong-like, for a mirror): the
    normal (cylinder normal tilted by the thread slope and by machining marks) reflects the
    direction to a near camera; the reflected direction looks up an environment of soft light
    lobes and brighter and darker sectors, with a dark patch where it sees the camera itself
    (as on the lands in BSData). A weak diffuse term, a slow illumination gradient, a soft
    highlight shoulder, a steel-to-brass tint and sensor noise follow. About 25 ms for 200x500.

    Returns: (height, width, 3) uint8 RGB.
    """
    h, w = int(height), int(width)
    y = np.arange(h, dtype=np.float64)[:, None]  # (H, 1)
    x = np.arange(w, dtype=np.float64)[None, :]  # (1, W)

    # Cylinder and thread geometry.
    radius = w * rng.uniform(0.47, 0.51)
    xc = w / 2 + rng.uniform(-0.02, 0.02) * w
    s = np.clip((x - xc) / radius, -0.999, 0.999)  # (1, W) sin(theta)
    theta = np.arcsin(s)
    cos_t = np.sqrt(1.0 - s * s)
    pitch = h * rng.uniform(0.26, 0.4)
    bow = rng.uniform(0.0, 0.6) * pitch  # px; > 0: the camera looks a little from above
    hand = rng.choice([-1.0, 1.0], p=[0.2, 0.8])
    tilt = hand * rng.uniform(0.0, 0.08)  # perspective and camera roll
    across = y + hand * pitch * theta / (2 * np.pi) + bow * cos_t + tilt * (x - xc)  # (H, W) px
    u = across / pitch + rng.random()
    profile_h, profile_slope = _thread_profile(rng)
    idx = (np.mod(u, 1.0) * PROFILE_SAMPLES).astype(np.int64) % PROFILE_SAMPLES
    relief = profile_h[idx]  # (H, W) in periods: > 0 on the lands, < 0 in the groove
    slope = profile_slope[idx]  # (H, W) d relief / d u

    # Machining marks bend the normal and vary the albedo, following the thread.
    # One texture row per pixel across the thread, interpolated so a scratch stays unbroken.
    n_along = 48
    marks = _streaks(rng, n_across=int(h + 2 * pitch + w) + 2, n_along=n_along)
    row = np.floor(across)
    frac = across - row
    mi = row.astype(np.int64) % (marks.shape[0] - 1)
    mj = np.broadcast_to(((theta + np.pi / 2) / np.pi * (n_along - 1)).astype(np.int64), mi.shape)
    mark = marks[mi, mj] * (1.0 - frac) + marks[mi + 1, mj] * frac  # (H, W)

    # Surface normal: cylinder normal (sin, 0, cos) tilted along y by the profile slope.
    ny = -slope + 0.015 * mark
    nx = np.broadcast_to(s, ny.shape)
    nz = np.broadcast_to(cos_t, ny.shape)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    # A near camera: the direction towards it, v, turns with the image row. Mirror v about n.
    cam_row, focal = rng.uniform(0.3, 1.0) * h, rng.uniform(1.2, 2.5) * h
    vy = (cam_row - y) / focal  # (H, 1)
    vz = 1.0 / np.sqrt(1.0 + vy * vy)
    vy = vy * vz
    n_dot_v = ny * vy + nz * vz
    rx, ry, rz = 2 * n_dot_v * nx, 2 * n_dot_v * ny - vy, 2 * n_dot_v * nz - vz

    # Environment: soft lights as von Mises-Fisher lobes over reflected directions:
    # a broad one in front (lights the lands), two grazing ones behind left and right (the
    # bright bands near the silhouette), and one overhead.
    lights = [
        ([rng.uniform(-0.3, 0.3), rng.uniform(-0.35, -0.05), 1.0], rng.uniform(0.55, 0.75), 0.4),
        ([-1.0, rng.uniform(-0.2, 0.1), -rng.uniform(0.25, 0.6)], rng.uniform(0.6, 0.95), 0.22),
        ([1.0, rng.uniform(-0.2, 0.1), -rng.uniform(0.25, 0.6)], rng.uniform(0.5, 1.0), 0.22),
        ([rng.uniform(-0.5, 0.5), -1.0, rng.uniform(0.0, 0.4)], rng.uniform(0.2, 0.4), 0.3),
    ]
    env = np.full(ny.shape, rng.uniform(0.1, 0.16))
    for direction, power, spread in lights:
        d = _normalize(np.array(direction))
        env += power * np.exp((rx * d[0] + ry * d[1] + rz * d[2] - 1.0) / spread**2)
    # The rest of the room: brighter and darker sectors around the spindle, which the mirror
    # turns into vertical bands running through every land.
    room = ndimage.gaussian_filter1d(rng.random(40), 2.5, mode="nearest")
    room = (room - room.min()) / (room.max() - room.min() + 1e-8)
    env *= rng.uniform(0.25, 0.45) + rng.uniform(0.6, 0.9) * np.interp(rx, np.linspace(-2, 2, room.size), room)
    # The camera seen in the mirror (where r comes back along v): a dark patch with steep
    # sides on the lands of the rows facing it, missing the steep grooves.
    camera = np.exp(-((rx / rng.uniform(0.12, 0.18)) ** 4) - ((ry - vy) / rng.uniform(0.12, 0.2)) ** 2)
    env *= 1.0 - rng.uniform(0.45, 0.7) * camera

    diffuse_dir = _normalize(np.array([rng.uniform(-0.5, 0.5), -0.4, 1.0]))
    diffuse = np.clip(nx * diffuse_dir[0] + ny * diffuse_dir[1] + nz * diffuse_dir[2], 0.0, 1.0)
    albedo = 1.0 + 0.05 * mark + 1.5 * np.minimum(relief, 0.0)  # less light reaches the groove
    shade = (0.95 * env + 0.25 * diffuse) * albedo

    shade *= _speckle(rng, shade.shape)
    # Slow illumination gradient across the frame.
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    shade *= rng.uniform(0.9, 1.1) + gx * (x / w - 0.5) + gy * (y / h - 0.5)

    # Background beside the silhouette; the thread profile scallops the silhouette edge.
    edge = radius - np.abs(x - xc) + 1.5 * pitch * relief  # (H, W) px inside the silhouette
    inside = np.clip(edge / 2.0 + 0.5, 0.0, 1.0)
    rim_dark = 1.0 - 0.7 * np.exp(-np.clip(edge, 0, None) / (0.01 * w))
    background = rng.uniform(0.5, 0.72) * (1.0 - 0.25 * (y / h))
    lum = inside * shade * rim_dark + (1.0 - inside) * background
    lum = ndimage.gaussian_filter(lum, sigma=0.7)

    # Exposure with a soft shoulder (highlights roll off instead of clipping), then the tint:
    # highlights stay near white, mid-tones take a steel-to-brass colour.
    lum = rng.uniform(1.05, 1.35) * lum + 0.03
    lum = lum / (1.0 + lum**4) ** 0.25
    warmth = rng.uniform(0.0, 1.0) ** 0.5  # most BSData spindles look brass-warm, a few grey
    gammas = np.array([1.0 - 0.2 * warmth, 1.0, 1.0 + 0.5 * warmth])
    rgb = np.clip(lum, 0.0, 1.0)[..., None] ** (gammas + rng.uniform(-0.03, 0.03, size=3))  # (H, W, 3)
    rgb = rgb * 255.0 + rng.normal(0.0, 2.0, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Dirt and tiny dents that defect-free BSData images carry too: a few faint dark specks.

    Returns: (H, W) float multiplicative factor in (0, 1].
    """
    h, w = shape
    dots = np.zeros(shape)
    n = rng.poisson(8)
    dots[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(1.5, 4.0, n)
    return 1.0 - np.clip(ndimage.gaussian_filter(dots, 0.8), 0.0, 0.5)


def _pit_centre(gray: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Draw a pit centre, favouring the thread flanks: where brightness changes across the thread.

    The weight is the smoothed vertical gradient (the threads run roughly horizontally), with
    the frame border, where the silhouette and background are, left out.
    """
    h, w = gray.shape
    flank = ndimage.gaussian_filter(np.abs(ndimage.gaussian_filter(gray, 2.0, order=(1, 0))), 3.0)
    weight = flank**2 + 1e-3 * flank.max() ** 2 + 1e-12  # mostly flanks, anywhere possible
    my, mx = max(1, int(0.06 * h)), max(1, int(0.1 * w))
    weight[:my], weight[h - my :], weight[:, :mx], weight[:, w - mx :] = 0.0, 0.0, 0.0, 0.0
    if not weight.any():  # too small an image for margins
        weight[:] = 1.0
    k = rng.choice(h * w, p=(weight / weight.sum()).ravel())
    return int(k // w), int(k % w)


def _pit_shape(rng: np.random.Generator, semi_x: float, semi_y: float, angle: float) -> np.ndarray:
    """A ragged blob: smooth noise thresholded inside an ellipse of the given semi-axes (px).

    Coarse noise makes lobes, fine noise a rough border. The threshold is set so the blob
    covers 50-80 % of the ellipse's area, and only its largest connected part is kept (one
    cavity). Returns: (2r + 1, 2r + 1) bool window centred on the pit, never empty.
    """
    r = int(np.ceil(1.3 * max(semi_x, semi_y))) + 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    ex, ey = (c * xx + s * yy) / semi_x, (-s * xx + c * yy) / semi_y
    coarse = ndimage.gaussian_filter(rng.standard_normal(xx.shape), max(1.0, semi_y / 2.5))
    fine = ndimage.gaussian_filter(rng.standard_normal(xx.shape), 0.7)
    field = (1.0 - ex * ex - ey * ey) + 0.5 * coarse / (coarse.std() + 1e-8) + 0.15 * fine / (fine.std() + 1e-8)
    field[ex * ex + ey * ey >= 1.6] = -np.inf  # stay near the ellipse
    area = max(1, int(rng.uniform(0.5, 0.8) * np.pi * semi_x * semi_y))
    blob = field >= np.sort(field, axis=None)[-area]
    labels, n = ndimage.label(blob)
    sizes = ndimage.sum(blob, labels, index=np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def add_pitting(
    image: np.ndarray, rng: np.random.Generator, n_pits: tuple[int, int] = (1, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """Add pitting: small dark ragged cavities with a faint bright lip, mostly on thread flanks.

    Each of n ~ U{n_pits[0]..n_pits[1]} pits is a blob (see `_pit_shape`) inside an ellipse
    whose long axis, 2-8 % of the image width, lies roughly along the thread. The cavity is
    darkened to 25-70 % of the surface's brightness, most at its wall, with a grainy, slightly
    brown floor; a few pixels just outside are brightened, as light catches the broken edge.

    image: (H, W, 3) uint8. Returns (image, mask): a new (H, W, 3) uint8 image and the
    (H, W) uint8 {0, 1} mask of the pixels changed; every other pixel is left as it was.
    """
    h, w = image.shape[:2]
    out = image.astype(np.float64)
    mask = np.zeros((h, w), dtype=bool)
    gray = out.mean(axis=2)
    n_left = int(rng.integers(n_pits[0], n_pits[1] + 1))
    tries = 100 * n_left  # a pit cut off by the frame is drawn again
    while n_left > 0 and tries > 0:
        tries -= 1
        cy, cx = _pit_centre(gray, rng)
        semi_x = max(1.5, rng.uniform(0.02, 0.08) * w / 2)
        blob = _pit_shape(rng, semi_x, max(1.5, semi_x * rng.uniform(0.45, 0.9)), rng.uniform(-0.35, 0.35))
        r = blob.shape[0] // 2
        # Clip the window to the image.
        y0, x0 = cy - r, cx - r
        sy, sx = slice(max(0, -y0), blob.shape[0] - max(0, y0 + blob.shape[0] - h)), slice(
            max(0, -x0), blob.shape[1] - max(0, x0 + blob.shape[1] - w)
        )
        blob = blob[sy, sx]
        win = (slice(max(0, y0), max(0, y0) + blob.shape[0]), slice(max(0, x0), max(0, x0) + blob.shape[1]))
        if not blob.any():
            continue
        n_left -= 1
        # Cavity: darkest at its broken wall, the floor a little lighter, grainy and brownish.
        depth = ndimage.distance_transform_edt(np.pad(blob, 1))[1:-1, 1:-1]  # 1 at the wall
        wall, lift = rng.uniform(0.25, 0.45), rng.uniform(0.0, 0.25)
        grain = 1.0 + 0.2 * ndimage.gaussian_filter(rng.standard_normal(blob.shape), 0.7) / 0.4
        floor = np.clip((wall + lift * (1.0 - np.exp(-(depth - 1.0) / 2.0))) * grain, 0.1, 0.9)
        tint = np.array([1.0, rng.uniform(0.88, 0.97), rng.uniform(0.7, 0.9)])
        patch = out[win]
        # Soften the outline as the optics would, without reaching past the mask.
        soft = np.clip(ndimage.gaussian_filter(blob.astype(np.float64), 1.0), 0.3, 1.0)[blob][:, None]
        patch[blob] = patch[blob] * (1.0 - soft + soft * floor[blob][:, None] * tint)
        # Lip: some border pixels just outside the cavity catch the light.
        ring = ndimage.binary_dilation(blob) & ~blob & (rng.random(blob.shape) < 0.3)
        patch[ring] = np.minimum(patch[ring] * rng.uniform(1.05, 1.15) + 5.0, 255.0)
        mask[win] |= blob | ring
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out, mask.astype(np.uint8)


def add_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add a scratch or crack: a thin dark line, 1-3 px wide, wandering for 15-40 % of the width.

    The line is a random walk whose heading turns a little at every step; its pixels are darkened
    to 35-65 % of the surface's brightness, a little less towards the ends.
    image: (H, W, 3) uint8. Returns (image, mask) as `add_pitting` does.
    """
    h, w = image.shape[:2]
    out = image.astype(np.float64)
    length = max(4, int(rng.uniform(0.15, 0.4) * w))
    y, x = rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.6) * w
    heading = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0.0)
    track = np.zeros((h, w), dtype=np.float64)
    for step in range(length):
        heading += rng.normal(0.0, 0.12)
        y, x = y + np.sin(heading), x + np.cos(heading)
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < h and 0 <= ix < w):
            break
        track[iy, ix] = 1.0 - 0.5 * abs(2.0 * step / length - 1.0) ** 2  # fainter at the ends
    if not track.any():  # started at the edge heading out: one pixel still marks it
        track[min(h - 1, int(0.5 * h)), min(w - 1, int(0.5 * w))] = 1.0
    width = int(rng.integers(1, 4))
    line = ndimage.grey_dilation(track, size=(width, width))
    mask = line > 0
    dark = rng.uniform(0.35, 0.65)
    out[mask] *= (1.0 - (1.0 - dark) * line[mask])[:, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask.astype(np.uint8)


def add_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add a large faint stain: a smooth blob of 20-50 % of the height across (wider along the
    screw), 8-18 % darker and slightly brown (corrosion, oil), with a soft edge; the mask is
    where it changes the pixels by at least a quarter of its full strength.
    image: (H, W, 3) uint8. Returns (image, mask) as `add_pitting` does.
    """
    h, w = image.shape[:2]
    out = image.astype(np.float64)
    radius = max(2.0, rng.uniform(0.1, 0.25) * h)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.15, 0.85) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(1.0, radius / 3))
    warp /= warp.std() + 1e-8
    field = 1.0 - ((yy - cy) ** 2 + ((xx - cx) / rng.uniform(1.0, 2.0)) ** 2) / radius**2 + 0.3 * warp
    strength = np.clip(ndimage.gaussian_filter(np.clip(field, 0.0, None), max(1.0, radius / 6)), 0.0, 1.0)
    strength /= max(strength.max(), 1e-8)
    depth = rng.uniform(0.08, 0.18)
    tint = np.array([1.0, rng.uniform(0.96, 0.99), rng.uniform(0.9, 0.96)])
    factor = 1.0 - depth * strength[..., None] * (2.0 - tint)  # darker, more so in blue
    mask = strength >= 0.25
    out[mask] *= factor[mask]
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask.astype(np.uint8)


# The defect kinds the synthetic data can draw, and what each adds to a rendered surface.
DEFECTS = {"pit": add_pitting, "scratch": add_scratch, "stain": add_stain}
DEFECT_FOLDERS = {"pit": "pitting", "scratch": "scratch", "stain": "stain"}  # in pseudo-paths


def _split_seed(seed: int, split: str) -> int:
    """The dataset seed of one split: independent streams for train and test from one run seed."""
    return int(np.random.SeedSequence([seed, SPLIT_STREAMS[split]]).generate_state(1)[0])


class SyntheticDataset(SampleSet):
    """`n_normal` defect-free images, then `n_defect` defective ones, made on demand; the defective
    ones take the kinds of `defects` (`DEFECTS`: pit, scratch, stain) in turn.

    Item i is a pure function of (seed, i) (its own `np.random.default_rng([seed, i])`), so any
    item can be drawn alone, in any order, with the same pixels. Images are rendered at
    (height, width) and, when `size` is set, resized to (size, size) (bilinear; masks nearest).
    Rendered samples are kept in memory.
    """

    has_masks = True

    def __init__(
        self,
        n_normal: int,
        n_defect: int,
        height: int,
        width: int,
        seed: int,
        size: int | None = None,
        split_name: str = "",
        defects: tuple[str, ...] = ("pit",),
    ):
        if n_normal < 0 or n_defect < 0:
            raise ValueError(f"SyntheticDataset: counts must be >= 0, got {n_normal} and {n_defect}")
        self.n_normal = int(n_normal)
        self.n_defect = int(n_defect)
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)
        self.size = None if size is None else int(size)
        self.split_name = split_name
        unknown = [d for d in defects if d not in DEFECTS]
        if not defects or unknown:
            raise ValueError(f"defects: {unknown or 'none'} given; choose from {', '.join(DEFECTS)}")
        self.defects = tuple(defects)
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.n_normal + self.n_defect

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if i not in self._cache:
            self._cache[i] = self._make(i)
        return self._cache[i]

    def _make(self, i: int) -> Sample:
        rng = np.random.default_rng([self.seed, i])
        image = render_surface(rng, self.height, self.width)
        label = int(i >= self.n_normal)
        if label:
            image, mask = DEFECTS[self._kind(i)](image, rng)
        else:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        if self.size is not None:
            image = resize_image(image, self.size)
            mask = np.asarray(Image.fromarray(mask).resize((self.size, self.size), Image.Resampling.NEAREST))
        return Sample(image=image, mask=mask, label=label, path=self._path(i))

    def _kind(self, i: int) -> str:
        """The defect kind of defective item i: the kinds in turn."""
        return self.defects[(i - self.n_normal) % len(self.defects)]

    def _path(self, i: int) -> str:
        kind, k = ("normal", i) if i < self.n_normal else (DEFECT_FOLDERS[self._kind(i)], i - self.n_normal)
        return f"synthetic://{self.split_name or 'all'}/{kind}/{k:04d}"

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64: 0 for the normals (first), 1 for the defectives."""
        return np.repeat(np.array([0, 1], dtype=np.int64), [self.n_normal, self.n_defect])

    @property
    def paths(self) -> list[str]:
        """Pseudo-paths such as `synthetic://train/normal/0003`, numbered within each class."""
        return [self._path(i) for i in range(len(self))]

    def describe(self) -> dict[str, int]:
        return {"total": len(self), "normal": self.n_normal, "defective": self.n_defect}

    def check(self, progress: bool = True) -> list[tuple[str, str]]:
        """No bad files can exist here; returns [] like the file datasets' report of bad files."""
        return []


def load_synthetic(cfg: DataConfig, split: str, seed: int) -> SyntheticDataset:
    """The `train` (normals only), `test` or `val` (normals, then pitting) split of `cfg.synthetic`.

    Each is drawn from `seed` on its own stream and resized to `cfg.image_size`; `val`, as large
    as `test`, chooses settings so that `test` only measures.
    """
    syn = cfg.synthetic
    counts = {"train": (syn.n_train, 0), "test": (syn.n_test_normal, syn.n_test_defect),
              "val": (syn.n_test_normal, syn.n_test_defect)}
    if split not in counts:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(counts)}")
    n_normal, n_defect = counts[split]
    return SyntheticDataset(
        n_normal, n_defect, syn.height, syn.width, _split_seed(seed, split), size=cfg.image_size, split_name=split,
        defects=tuple(syn.defects),
    )


def write_synthetic_tree(
    root: str | Path, n_train: int, n_test_normal: int, n_test_defect: int, seed: int, height: int, width: int
) -> Path:
    """Write the synthetic data, at its rendered size, as an MVTec-AD-style folder tree.

    Layout under `root/synthetic`: `train/good/0000.png`, `test/good/0000.png`,
    `test/pitting/0000.png` and `ground_truth/pitting/0000_mask.png` (255 = defect). The
    images are those of `load_synthetic` with the same seed, before resizing, so the other
    dataset formats can be checked against it. Returns the `synthetic` folder.
    """
    out = Path(root) / "synthetic"
    for folder in ("train/good", "test/good", "test/pitting", "ground_truth/pitting"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    splits = {
        "train": SyntheticDataset(n_train, 0, height, width, _split_seed(seed, "train"), split_name="train"),
        "test": SyntheticDataset(
            n_test_normal, n_test_defect, height, width, _split_seed(seed, "test"), split_name="test"
        ),
    }
    for split, data in splits.items():
        for sample in data:
            stem = sample.path.rsplit("/", 1)[-1]  # 0000, 0001, ... within each class
            kind = "pitting" if sample.label else "good"
            Image.fromarray(sample.image).save(out / split / kind / f"{stem}.png")
            if sample.label:
                Image.fromarray(sample.mask * 255).save(out / "ground_truth" / "pitting" / f"{stem}_mask.png")
    return out
