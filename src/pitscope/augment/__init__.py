"""Pseudo-defects pasted onto defect-free images for self-supervised training (SPEC section 3).

Every generator is a pure function of (image (H, W, 3) uint8, numpy Generator) returning
(image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}); `PseudoDefects` picks one per call as an
`AugmentConfig` says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from pitscope.augment.cutpaste import normal_patch, scar_patch
from pitscope.augment.pastenoise import paste_noise
from pitscope.augment.pits import pit_specks
from pitscope.augment.real import paste_cutout
from pitscope.augment.regions import check_image
from pitscope.augment.textures import make_texture_source
from pitscope.config import AugmentConfig
from pitscope.data.labelled import Cutout

Generator = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _noise(cfg: AugmentConfig) -> Generator:
    """PasteNoise with the config's texture source, Perlin options, alpha range and op count."""
    return partial(
        paste_noise,
        textures=make_texture_source(cfg.texture_dir),
        scales=tuple(cfg.perlin_scales),
        threshold=cfg.perlin_threshold,
        rotate=cfg.perlin_rotate,
        alpha_range=(cfg.alpha_min, cfg.alpha_max),
        n_ops=cfg.randaugment_ops,
    )


def _scar(cfg: AugmentConfig) -> Generator:
    return scar_patch


def _normal(cfg: AugmentConfig) -> Generator:
    return normal_patch


def _pit(cfg: AugmentConfig) -> Generator:
    return pit_specks


# Pseudo-defect kind -> builder(cfg) of its generator(image, rng) -> (image, mask).
KINDS: dict[str, Callable[[AugmentConfig], Generator]] = {
    "noise": _noise,
    "scar": _scar,
    "normal": _normal,
    "pit": _pit,
}


REAL = "real"  # the kind of marked real defects, cut out and pasted (`pitscope.augment.real`)


class PseudoDefects:
    """Draws one pseudo-defect of a kind chosen uniformly from `cfg.kinds`, and "real" after them
    when `cutouts` of marked real defects are given (`data.labelled_defects`).

    Calling it returns (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}, kind) where kind is
    1 + the index of the chosen kind in `cfg.kinds`, so that 0 stays free for "normal image" in
    a multiclass head. Holds no random state: all randomness comes from the rng passed in.
    """

    def __init__(self, cfg: AugmentConfig, cutouts: Sequence[Cutout] = ()):
        if not cfg.kinds:
            raise ValueError(f"augment.kinds: name at least one of {', '.join(KINDS)}")
        for name in cfg.kinds:
            if name not in KINDS:
                raise ValueError(f"augment.kinds: unknown kind {name!r}; valid kinds: {', '.join(KINDS)}")
        if len(set(cfg.kinds)) != len(cfg.kinds):
            raise ValueError(f"augment.kinds: {cfg.kinds} names a kind twice")
        self.cfg = cfg
        self.kinds: list[str] = list(cfg.kinds)
        self.generators: list[Generator] = [KINDS[name](cfg) for name in self.kinds]
        if cutouts:
            self.kinds.append(REAL)
            self.generators.append(partial(paste_cutout, cutouts=list(cutouts)))

    @property
    def n_kinds(self) -> int:
        """How many pseudo-defect kinds are drawn (a multiclass head has n_kinds + 1 classes)."""
        return len(self.kinds)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """One pseudo-defect on `image` (H, W, 3) uint8: (image, mask, kind in 1..n_kinds)."""
        check_image(image)
        index = int(rng.integers(self.n_kinds))
        out, mask = self.generators[index](image, rng)
        return out, mask, index + 1

    def __repr__(self) -> str:
        return f"PseudoDefects(kinds={self.kinds})"
