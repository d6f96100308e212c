"""Typed configuration: dataclasses filled from YAML presets and `section.key=value` overrides.

A preset is a YAML file whose top-level keys are the sections of `Config`. Every key is checked
against the dataclass: an unknown key or a value of the wrong type is a `ConfigError` that names
the key and lists the valid choices; a key of `REMOVED` is one that says what to do instead.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
# score.map_normalisation values whose maps carry a factor of the photo's own image score
SCORE_FACTORS = ("image_mean_score", "image_score", "image_score_capped")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key at fault."""


@dataclass
class SyntheticConfig:
    """The built-in generator of ball-screw-like images (format `synthetic`)."""

    n_train: int = 48
    n_test_normal: int = 12
    n_test_defect: int = 24
    height: int = 200
    width: int = 500
    defects: list[str] = field(default_factory=lambda: ["pit"])  # pit | scratch | stain, drawn in turn


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    format: str = "synthetic"  # bsdata | mvtec | folder | synthetic
    root: str | None = None  # dataset folder; bsdata falls back to PITSCOPE_BSDATA / ../shared
    category: str | None = None  # mvtec: the category folder under root
    test_normal_dir: str | None = None  # folder: defect-free test images
    test_defect_dir: str | None = None  # folder: defective test images
    mask_dir: str | None = None  # folder: masks of the defective images, paired by exact stem
    image_size: int = 256  # images are resized to image_size x image_size
    # null: square images; set, images are resized to image_size (height) x image_width, which
    # keeps a photo's aspect ratio when width / height is the photos' own
    image_width: int | None = None
    # with image_width null: the photos keep their own aspect ratio, the shorter side at image_size
    # and the longer a multiple of 32, from the training photos' median width / height. It is set
    # when a dataset is first built from the config, which then holds the shape and this false.
    keep_aspect: bool = False
    n_train_normal: int = 631  # bsdata: defect-free images in the training split
    split_file: str | None = None  # where the split is written (default: beside the outputs)
    split_seed: int = 0  # bsdata: seeds the split, apart from the run seed, so runs share one split
    holdout: str = "none"  # bsdata: none | positions (validation and label positions held apart)
    positions_file: str | None = None  # bsdata: the position split (default: the one shipped)
    position_fold: int | None = None  # bsdata, holdout positions: measure this fold of the test positions
    position_folds: int = 3  # the folds of the cross-position protocol
    on_bad_file: str = "skip"  # skip | error
    train_images: int | None = None  # train on a seeded random subset of this many images (null: all)
    # a folder of photos with marked defects (masks in masks/<stem>.png or labelme <stem>.json):
    # each marked defect is pasted onto defect-free images as one more pseudo-defect kind ("real")
    labelled_defects: str | None = None
    cache: bool = True  # keep decoded, resized images in memory
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def shape(self) -> tuple[int, int]:
        """The (height, width) images are resized to."""
        return self.image_size, self.image_width or self.image_size

    def rescale(self, height: int) -> None:
        """Set the image height to `height`, the width (when set) in the same ratio."""
        if self.image_width is not None:
            self.image_width = max(1, round(self.image_width * height / self.image_size))
        self.image_size = height


@dataclass
class AugmentConfig:
    """Pseudo-defects pasted onto normal images during training (SPEC section 3)."""

    kinds: list[str] = field(default_factory=lambda: ["noise", "scar"])  # noise | scar | normal | pit
    texture_dir: str | None = None  # images for PasteNoise textures; None = built-in procedural
    perlin_scales: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    perlin_threshold: float = 0.5
    perlin_rotate: bool = True
    alpha_min: float = 0.5
    alpha_max: float = 1.0
    randaugment_ops: int = 3
    # the first this many epochs paste strong Perlin noise alone (texture weight 0.5-1, as if
    # kinds=[noise], alpha_min=0, alpha_max=0.5), which a classifier tells apart from the first
    # epoch; the later epochs paste `kinds` as set (0: every epoch does)
    opening_epochs: int = 0


@dataclass
class ModelConfig:
    """The double self-supervised network (SPEC section 4)."""

    weights: str = "none"  # none | imagenet | path to a local ResNet-18 state dict
    projector_layers: int = 2
    projector_hidden: int = 512
    head: str = "binary"  # binary | multiclass (normal / one class per pseudo-defect kind)
    target: str = "hog"  # hog | rgb | none
    mask_type: str = "mscm"  # none | dropout | rectangle | mscm
    mscm_dilation: int = 2
    mscm_stage: str = "layer1"  # backbone stage feeding the masked convolution
    se_reduction: int = 16
    loss_lambda: float = 1.0
    classify: bool = True  # the image-level pseudo-defect task
    segment: bool = False  # a head that segments the pasted pseudo-defects (SPEC 5b)
    segment_stages: list[str] = field(default_factory=lambda: ["layer1", "layer2", "layer3"])
    segment_weight: float = 1.0
    sspcab: bool = False  # SSPCAB block after layer4 with its reconstruction loss (table 3 baseline)
    sspcab_weight: float = 0.1  # weight of that loss


@dataclass
class TrainConfig:
    """Optimisation (SPEC section 6)."""

    epochs: int = 800
    batch_size: int = 32
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 3e-5
    budget_minutes: float | None = None  # wall-clock budget; training stops there and says so
    # constant: lr throughout (the paper). cosine: lr * (1 + cos(pi * progress)) / 2, where
    # progress is the fraction of the planned epochs' steps done: train.epochs, or fewer when at
    # the pace of the last epoch the rest would end past the budget (decided after each epoch, so a
    # budgeted run still ends near zero; the clock itself never enters the rate)
    lr_schedule: str = "constant"  # constant | cosine
    warmup_epochs: float = 0.0  # the rate rises linearly from near zero over this many epochs (0: from the start)
    # keep the network's weights after every this many epochs in OUTPUT_DIR/snapshots/ (0: off),
    # e.g. to see how the scores develop with training (`pitscope refit` scores a snapshot)
    snapshot_every: int = 0
    # write OUTPUT_DIR/checkpoint_last.pt (network, optimiser, progress) as training goes, so
    # --resume can continue a stopped run; false: no checkpoint is written (the run cannot resume)
    checkpoint: bool = True
    # with checkpoint on: write it after the run's first epoch, every this many epochs, after the
    # last epoch and when the budget stops the run (a crash loses at most this many epochs; each
    # write holds the network and the optimiser's momentum)
    checkpoint_every: int = 1
    # when the pseudo-defect classifier has learnt (an epoch's mean cross-entropy at most 0.97 of
    # chance) and then sits back at chance (at least 0.99 of it) two epochs in a row, go back to the
    # weights, BatchNorm statistics and momentum of the epoch with the lowest cross-entropy and go on
    # at half the learning rate; at most this many times (0: off). A run that ends one epoch at
    # chance hands back that best epoch. The best epoch is kept in memory and, with checkpoints on,
    # in OUTPUT_DIR/checkpoint_best.pt, so --resume goes on as the uninterrupted run would
    collapse_rollbacks: int = 0
    # train on random crop_size x crop_size crops of the images at data.image_size (null: whole
    # images); scoring still sees whole images at data.image_size. With data.image_size above the
    # crop, small defects cover more pixels at the cost of one step per crop, not per whole image.
    # Pseudo-defects are sized to the crop as they would be to a whole image of that size.
    crop_size: int | None = None
    # start from the network of this model file or training checkpoint instead of fresh weights
    # (heads it lacks, e.g. the segmentation head, start fresh); `pitscope finetune` sets it
    init_from: str | None = None
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # auto: bf16 autocast on CUDA GPUs with bf16 (fp16 with loss scaling on older ones), float32
    # on the CPU; bf16 on a CPU with AVX-512 BF16 / AMX trains about 2x faster, elsewhere slower;
    # bf16_where_native: bf16 where the device runs it natively, float32 elsewhere
    precision: str = "auto"  # auto | fp32 | bf16 | bf16_where_native | fp16 (fp16 on CUDA only)
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and GPU
    compile: bool = False  # torch.compile the network (slow first steps, faster later ones)
    log_every: int = 10


@dataclass
class ScoreConfig:
    """Mahalanobis scoring and the production threshold (SPEC section 5)."""

    shrinkage: str = "ledoit_wolf"  # ledoit_wolf | ridge
    ridge: float = 0.01
    # true: before fitting, recompute the backbone's BatchNorm statistics on the defect-free images
    # the scorers are fitted on (training leaves running averages of its last batches, half of them
    # pseudo-defects)
    recompute_batchnorm: bool = False
    # padim: after a first fit, each map cell's Gaussians are fitted again without this share of
    # the fitting photos, at that cell, whose features lie furthest from the first fit (0: one fit
    # over every photo). Leaves out marks the defect-free photos carry at a few cells.
    fit_trim: float = 0.0
    pixel_method: str = "padim"  # padim | segmentation (needs model.segment) | patch (CutPaste)
    pixel_stages: list[str] = field(default_factory=lambda: ["layer1", "layer2", "layer3"])
    pixel_channels: int | None = 100  # random channel subset of the stacked stages (PaDiM), drawn with seed; null = all
    # padim: the kept channels dealt at random into this many equal groups, each with its own
    # Gaussian per position; a cell's squared distance is the sum of its groups'
    channel_groups: int = 1
    batch_size: int = 16  # images per batch when extracting features and scoring
    # the height images are scored at once the network is trained (null: data.image_size; the
    # width follows data.image_width's ratio to data.image_size); the
    # network is convolutional, so one trained at 256 x 256 can be fitted and scored at 512 x 512
    image_size: int | None = None
    patch_size: int = 64  # patch: side of the square crops, in pixels at data.image_size
    patch_stride: int = 16  # patch: step between crops, in pixels
    smoothing_sigma: float = 4.0
    # the map shown and ranked (heatmaps, pixel metrics), in two steps (each 0: off; else an odd
    # number of pixels at the scoring size): the map less its grey opening over a square of
    # map_background_window pixels, which drops raised stretches that hold such a square and keeps a
    # narrower blob's height above its surroundings; then each pixel times (its value over the
    # largest value within a square of map_sharpen_window pixels around it) ** map_sharpen_power,
    # so a blob keeps its peak and its flanks fall. The regions and the pixel threshold are cut
    # from the map before both, or with regions_after_background from the map after the first
    # (the background step is then part of the map the detector gives, the threshold is a quantile
    # of held-back maps after it, and the map shown is that map narrowed)
    map_background_window: int = 0
    regions_after_background: bool = False
    map_sharpen_window: int = 0
    map_sharpen_power: float = 1.0
    # padim: each map position is scored against the Gaussians of the positions within this many
    # map cells of it and keeps the smallest distance (0: its own Gaussian only), so what shifts by
    # a cell or two from photo to photo (an edge, a silhouette) is normal; the other pixel methods
    # have no Gaussian per position and do not read it
    neighbourhood: int = 0
    # padim: the maps are a classifier's P(defect), fitted on data.labelled_defects' marked photos
    # over the stage features and the Gaussians' distances (`pitscope finetune`)
    defect_probe: bool = False
    # none | image_mean: each map divided by its own mean | image_mean_score: that, times the
    # image score over the image threshold | image_score: the map times the image score over the
    # image threshold | image_score_capped: times that ratio up to 1, so only photos below the
    # image threshold are scaled down (the last three need image_method embedding)
    map_normalisation: str = "image_mean"
    image_method: str = "embedding"  # embedding: Mahalanobis of the image embedding | map_max
    # The image embedding: the image branch's projector output (needs model.classify), the pooled
    # layer4 it reads, or the pooled layer1 and layer4 side by side (layer1+layer4: a Gaussian for
    # each, the image score the sum of the two distances, each standardised by its mean and spread
    # on training images its Gaussian did not see)
    image_features: str = "projection"
    threshold_quantile: float = 0.99  # image threshold: this quantile of defect-free scores
    pixel_threshold_quantile: float = 0.999  # predicted region: this quantile of held-back maps ...
    pixel_threshold_from: str = "pixels"  # ... of all their values (pixels) or of each map's maximum (image_max)
    min_region_fraction: float = 0.0  # predicted regions smaller than this share of the image are dropped
    region_core: float = 0.0  # each region keeps its pixels at or above this share of its own peak (0: all)
    regions_on: str = "all"  # all | defective | defective_peak: regions on every image, or on images decided
    # defective, or on those with at least the region around the map's peak
    # the peak's region (defective_peak) covers at most this share of the image, its peak pixel at
    # least (0: no bound)
    peak_region_max: float = 0.0
    calibration_fraction: float = 0.1  # held back from fitting, to calibrate the thresholds on
    # Where the image threshold's defect-free scores come from. out_of_fold: every training image,
    # scored by a Gaussian refitted without it (1 / calibration_fraction folds, so each refit sees
    # about as many images as the fitted scorer); held_back: the held-back images only (few: a high
    # quantile of them is their largest score or nearly). image_method map_max: the pixel Gaussians refitted without each fold (pixel_method padim; the
    # other pixel methods use the held-back images).
    threshold_from: str = "out_of_fold"


@dataclass
class Config:
    """Everything a run needs; written next to every output."""

    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


# Valid values of the string options that take one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("bsdata", "mvtec", "folder", "synthetic"),
    "data.on_bad_file": ("skip", "error"),
    "model.head": ("binary", "multiclass"),
    "model.target": ("hog", "rgb", "none"),
    "model.mask_type": ("none", "dropout", "rectangle", "mscm"),
    "model.mscm_stage": ("layer1", "layer2", "layer3", "layer4"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16", "bf16_where_native", "fp16"),
    "train.lr_schedule": ("constant", "cosine"),
    "score.shrinkage": ("ledoit_wolf", "ridge"),
    "score.pixel_method": ("padim", "segmentation", "patch"),
    "score.map_normalisation": ("none", "image_mean", "image_mean_score", "image_score", "image_score_capped"),
    "data.holdout": ("none", "positions"),
    "score.regions_on": ("all", "defective", "defective_peak"),
    "score.pixel_threshold_from": ("pixels", "image_max"),
    "score.image_method": ("embedding", "map_max"),
    "score.image_features": ("projection", "layer4", "layer1+layer4"),
    "score.threshold_from": ("out_of_fold", "held_back"),
}
# Options that were removed: key -> what to do instead. Given by a user, each is an error that says
# so; in a saved model or checkpoint, `pitscope.upgrade` drops it.
REMOVED: dict[str, str] = {
    "train.average_from": "training returns its last weights (averaging the last epochs' weights was "
    "not a gain on BSData); delete the key",
    "score.channel_seed": "the channel subset of score.pixel_channels is drawn with the run's seed; delete the "
    "key, or change seed to draw another subset",
}
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "data.synthetic.defects": ("pit", "scratch", "stain"),
    "augment.kinds": ("noise", "scar", "normal", "pit"),
    "score.pixel_stages": ("conv1", "layer1", "layer2", "layer3", "layer4"),
    "model.segment_stages": ("conv1", "layer1", "layer2", "layer3", "layer4"),
}


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, lists, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_describe(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{key}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}"
            )
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if full in REMOVED:
            raise ConfigError(f"{full} was removed: {REMOVED[full]}")
        if key not in names:
            raise ConfigError(
                f"unknown key {full!r}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    obj = cls(**kwargs)
    return obj


# Numeric ranges: key -> (lowest, highest, whether the lowest itself is allowed); None: unbounded.
# A null value (where the type allows it) means "off" and is not checked.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "seed": (0, None, True),
    "data.synthetic.n_train": (1, None, True),
    "data.synthetic.n_test_normal": (0, None, True),
    "data.synthetic.n_test_defect": (0, None, True),
    "data.synthetic.height": (32, None, True),
    "data.synthetic.width": (32, None, True),
    "data.n_train_normal": (0, None, True),
    "data.position_folds": (2, None, True),
    "train.epochs": (0, None, True),  # 0: no training, the untrained baseline
    "train.batch_size": (1, None, True),
    "train.lr": (0, None, False),
    "train.warmup_epochs": (0, None, True),
    "train.momentum": (0, 1, True),
    "train.weight_decay": (0, None, True),
    "train.budget_minutes": (0, None, False),
    "train.num_workers": (0, None, True),
    "train.checkpoint_every": (1, None, True),
    "train.collapse_rollbacks": (0, None, True),
    "train.log_every": (1, None, True),
    "augment.perlin_threshold": (0, 1, False),
    "augment.randaugment_ops": (0, None, True),
    "augment.opening_epochs": (0, None, True),
    "score.ridge": (0, None, True),
    "score.pixel_channels": (1, None, True),
    "score.channel_groups": (1, None, True),
    "score.batch_size": (1, None, True),
    "score.smoothing_sigma": (0, None, True),
    "score.map_background_window": (0, None, True),
    "score.map_sharpen_window": (0, None, True),
    "score.map_sharpen_power": (0, None, False),
    "score.neighbourhood": (0, None, True),
    "score.region_core": (0, 1, True),
    "score.peak_region_max": (0, 1, True),
}


def _check_ranges(cfg: Config) -> None:
    for key, (low, high, low_ok) in RANGES.items():
        value = get_value(cfg, key)
        if value is None:
            continue
        above = value >= low if low_ok else value > low
        if not above or (high is not None and value > high):
            lower = f"{'>=' if low_ok else '>'} {low:g}"
            allowed = lower if high is None else f"{lower} and <= {high:g}"
            raise ConfigError(f"{key}: must be {allowed}, got {value}")


def rescale_images(cfg: Config, height: int) -> None:
    """Set the images' height to `height`, their width (when set) and the training crops (when
    set) in the same ratio: the same photos at another resolution."""
    if cfg.train.crop_size is not None:
        cfg.train.crop_size = round(cfg.train.crop_size * height / cfg.data.image_size)
    cfg.data.rescale(height)


def validate(cfg: Config) -> Config:
    """Check the options with a fixed set of values and the numeric ranges; raise ConfigError
    naming the key and what it allows."""
    _check_ranges(cfg)
    for key, valid in CHOICES.items():
        value = get_value(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(valid)}")
    for key, valid in LIST_CHOICES.items():
        values = get_value(cfg, key)
        if not values:
            raise ConfigError(f"{key}: must name at least one of {', '.join(valid)}")
        for value in values:
            if value not in valid:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(valid)}")
    if not 0.0 <= cfg.augment.alpha_min <= cfg.augment.alpha_max <= 1.0:
        raise ConfigError("augment.alpha_min/alpha_max: need 0 <= alpha_min <= alpha_max <= 1")
    if cfg.augment.opening_epochs and "noise" not in cfg.augment.kinds:
        raise ConfigError(
            "augment.opening_epochs pastes noise alone first; it needs noise among augment.kinds "
            f"(now {cfg.augment.kinds}) so the classes of a multiclass head stay the same"
        )
    if not cfg.model.classify and cfg.model.target == "none" and not cfg.model.segment:
        raise ConfigError(
            "model.classify=false, model.target=none and model.segment=false leave nothing to train; enable one task"
        )
    if cfg.score.image_features == "projection" and not cfg.model.classify:
        raise ConfigError(
            "score.image_features=projection needs the image branch (model.classify=true); "
            "use score.image_features=layer4 without it"
        )
    channels, groups = cfg.score.pixel_channels, cfg.score.channel_groups
    if channels is not None and channels % groups:
        raise ConfigError(
            f"score.pixel_channels={channels} does not divide into score.channel_groups={groups} equal groups"
        )
    if cfg.score.pixel_method == "segmentation" and not cfg.model.segment:
        raise ConfigError(f"score.pixel_method={cfg.score.pixel_method} needs model.segment=true")
    if cfg.data.image_size < 32:
        raise ConfigError(f"data.image_size: must be at least 32, got {cfg.data.image_size}")
    if cfg.data.image_width is not None and cfg.data.image_width < 32:
        raise ConfigError(f"data.image_width: must be at least 32 or null (square images), got {cfg.data.image_width}")
    if cfg.score.image_size is not None and cfg.score.image_size < 32:
        raise ConfigError(
            f"score.image_size: must be at least 32 or null (data.image_size), got {cfg.score.image_size}"
        )
    if cfg.score.image_size is not None and cfg.data.image_width is not None:
        width = round(cfg.data.image_width * cfg.score.image_size / cfg.data.image_size)
        if width < 32:
            raise ConfigError(
                f"score.image_size: {cfg.score.image_size} makes the scored images {width} wide "
                f"(data.image_width in its ratio to data.image_size); they must be at least 32"
            )
    if cfg.score.pixel_method == "patch":
        if not 32 <= cfg.score.patch_size <= min(cfg.data.shape):
            raise ConfigError(
                f"score.patch_size: must lie in 32..{min(cfg.data.shape)} (the images' shorter side), "
                f"got {cfg.score.patch_size}"
            )
        if cfg.score.patch_stride < 1:
            raise ConfigError(f"score.patch_stride: must be at least 1, got {cfg.score.patch_stride}")
    if cfg.train.snapshot_every < 0:
        raise ConfigError(
            f"train.snapshot_every: must be 0 (off) or a number of epochs, got {cfg.train.snapshot_every}"
        )
    if cfg.train.crop_size is not None and not 32 <= cfg.train.crop_size <= min(cfg.data.shape):
        raise ConfigError(
            f"train.crop_size: must lie in 32..{min(cfg.data.shape)} (the images' shorter side) or be null "
            f"(whole images), got {cfg.train.crop_size}"
        )
    if not 0.0 <= cfg.score.fit_trim < 0.5:
        raise ConfigError(f"score.fit_trim: must lie in [0, 0.5), got {cfg.score.fit_trim}")
    if cfg.score.fit_trim and cfg.score.pixel_method != "padim":
        raise ConfigError(f"score.fit_trim trims the padim Gaussians; pixel_method is {cfg.score.pixel_method}")
    if cfg.score.fit_trim and cfg.score.image_method == "map_max" and cfg.score.threshold_from == "out_of_fold":
        raise ConfigError(
            "score.fit_trim does not combine with image_method map_max and threshold_from out_of_fold "
            "(the out-of-fold refits take whole photos out of untrimmed sums); use threshold_from held_back"
        )
    if not 0.0 <= cfg.score.calibration_fraction < 1.0:
        raise ConfigError(f"score.calibration_fraction: must lie in [0, 1), got {cfg.score.calibration_fraction}")
    if cfg.data.holdout != "none" and cfg.data.format != "bsdata":
        raise ConfigError(
            f"data.holdout={cfg.data.holdout} holds BSData positions apart; data.format is {cfg.data.format}"
        )
    if cfg.data.position_fold is not None and cfg.data.holdout != "positions":
        raise ConfigError("data.position_fold needs data.holdout=positions")
    if cfg.data.position_fold is not None and not 0 <= cfg.data.position_fold < cfg.data.position_folds:
        raise ConfigError(
            f"data.position_fold: must lie in 0..{cfg.data.position_folds - 1}, got {cfg.data.position_fold}"
        )
    if cfg.data.positions_file is not None and cfg.data.holdout != "positions":
        raise ConfigError("data.positions_file is read only with data.holdout=positions")
    if cfg.score.map_normalisation in SCORE_FACTORS and cfg.score.image_method != "embedding":
        raise ConfigError(
            f"score.map_normalisation={cfg.score.map_normalisation} needs score.image_method=embedding "
            "(with map_max the image score is read from the map itself)"
        )
    if cfg.score.map_normalisation in SCORE_FACTORS and cfg.score.image_features == "layer1+layer4":
        raise ConfigError(
            f"score.map_normalisation={cfg.score.map_normalisation} scales maps by the image score over the "
            "threshold; score.image_features=layer1+layer4 gives a standardised score that can be 0 or below"
        )
    if cfg.score.defect_probe and (cfg.score.pixel_method != "padim" or not cfg.data.labelled_defects):
        raise ConfigError(
            "score.defect_probe=true needs score.pixel_method=padim (it reads the Gaussians' distances) and "
            "data.labelled_defects (the photos with marked defects it learns from)"
        )
    if cfg.score.defect_probe and (cfg.score.image_method != "embedding" or cfg.score.calibration_fraction == 0):
        raise ConfigError(
            "score.defect_probe=true needs score.image_method=embedding (the image threshold is not set on the "
            "probe's maps) and score.calibration_fraction > 0 (held-back photos fit and calibrate it)"
        )
    if cfg.score.regions_after_background and not cfg.score.map_background_window:
        raise ConfigError("score.regions_after_background=true needs score.map_background_window above 0")
    for key in ("map_background_window", "map_sharpen_window"):
        if getattr(cfg.score, key) % 2 == 0 and getattr(cfg.score, key):
            raise ConfigError(f"score.{key}: must be 0 (off) or an odd number of pixels, got {getattr(cfg.score, key)}")
    if not 0.0 <= cfg.score.min_region_fraction < 1.0:
        raise ConfigError(f"score.min_region_fraction: must lie in [0, 1), got {cfg.score.min_region_fraction}")
    for key in ("threshold_quantile", "pixel_threshold_quantile"):
        if not 0.0 < getattr(cfg.score, key) <= 1.0:
            raise ConfigError(f"score.{key}: must lie in (0, 1]")
    return cfg


def get_value(cfg: Any, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def from_dict(values: dict) -> Config:
    """Build and validate a Config from a nested mapping."""
    return validate(_build(Config, values or {}))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _set_nested(values: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    cls: Any = Config
    if key in REMOVED:
        raise ConfigError(f"{key} was removed: {REMOVED[key]}")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown key {key!r}: {part!r} is not in {where}; valid keys: {', '.join(names)}")
        if i == len(parts) - 1:
            node[part] = value
            return
        cls = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: expected a mapping")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value`; the value is read as YAML (so 3, 0.5, true, [a, b], null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot read the value: {exc}") from exc
    return key, value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str) -> Path:
    """A preset is a name from configs/ (`cpu`, `paper`, ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    return candidate


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset (name or path; None = defaults) and apply `section.key=value` overrides."""
    values: dict = {}
    if preset is not None:
        path = resolve_preset(preset)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        values = loaded or {}
    return apply_overrides(from_dict(values), overrides)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of cfg with `section.key=value` overrides applied and checked."""
    values = to_dict(cfg)
    for text in overrides:
        key, value = parse_override(text)
        _set_nested(values, key, value)
    return from_dict(values)
