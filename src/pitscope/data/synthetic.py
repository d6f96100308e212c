"""The built-in `synthetic` dataset: procedural ball-screw photographs with pitting.

It lets the demo train and evaluate with no download. The renderer (`surface.py`) imitates
the BSData photographs (a threaded spindle filling the frame, its axis vertical, thread lands running
almost horizontally across the image): a helical thread profile wrapped on a cylinder, shaded
as polished steel reflecting a few soft lights, with machining marks along the thread.
Pitting is added as small dark, ragged cavities, preferably on the thread flanks.

Every image is a pure function of (seed, index): the dataset never touches the global RNG.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from pitscope.config import DataConfig
from pitscope.data.surface import render_surface
from pitscope.data.types import Sample, SampleSet
from pitscope.tensors import Shape, as_shape, resize_image, resize_mask

RENDER_THREADS = 2  # `SyntheticDataset.check` renders on this many threads

# Split names and the stream that keeps their seeds apart.
SPLIT_STREAMS = {"train": 0, "test": 1, "val": 2}


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
        sy, sx = (
            slice(max(0, -y0), blob.shape[0] - max(0, y0 + blob.shape[0] - h)),
            slice(max(0, -x0), blob.shape[1] - max(0, x0 + blob.shape[1] - w)),
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
        size: Shape | None = None,
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
        self.size = None if size is None else as_shape(size)
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
            image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
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
        """Render every image not yet rendered, on RENDER_THREADS threads (numpy releases the GIL
        in its array operations), and keep them, so that training and fitting read them from
        memory. Each image is drawn from its own seeded generator: the same images as one by one.
        No bad files can exist here; returns [] like the file datasets' report of bad files."""
        missing = [i for i in range(len(self)) if i not in self._cache]
        if len(missing) > 1:
            with ThreadPoolExecutor(RENDER_THREADS) as pool:
                rendered = zip(missing, pool.map(self._make, missing))
                bar = tqdm(
                    rendered, total=len(missing), desc="rendering synthetic images", unit="img", disable=not progress
                )
                for i, sample in bar:
                    self._cache[i] = sample
        return []


def load_synthetic(cfg: DataConfig, split: str, seed: int) -> SyntheticDataset:
    """The `train` (normals only), `test` or `val` (normals, then pitting) split of `cfg.synthetic`.

    Each is drawn from `seed` on its own stream and resized to `cfg.image_size`; `val`, as large
    as `test`, chooses settings so that `test` only measures.
    """
    syn = cfg.synthetic
    counts = {
        "train": (syn.n_train, 0),
        "test": (syn.n_test_normal, syn.n_test_defect),
        "val": (syn.n_test_normal, syn.n_test_defect),
    }
    if split not in counts:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(counts)}")
    n_normal, n_defect = counts[split]
    return SyntheticDataset(
        n_normal,
        n_defect,
        syn.height,
        syn.width,
        _split_seed(seed, split),
        size=cfg.shape,
        split_name=split,
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
