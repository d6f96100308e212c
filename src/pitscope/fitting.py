"""Train and fit in one call: the network, its scorers and its thresholds, from a config; teach a
model the look of labelled defects (`finetune`: a defect probe on its maps, or its network
trained further); or fit a trained network's scorers again (`refit`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from pitscope import distributed
from pitscope.config import Config, apply_overrides, from_dict, load_config, validate
from pitscope.data import build_dataset, prepare_split_file
from pitscope.data.dataset import AnomalyDataset, JoinedSampleSet, Record
from pitscope.data.imageio import IMAGE_SUFFIXES, is_image_file, list_images
from pitscope.data.labelled import load_labelled_defects
from pitscope.data.types import DatasetLayoutError, SampleSet
from pitscope.defect_probe import DefectProbe
from pitscope.files import file_sha256
from pitscope.inference import Detector
from pitscope.model_file import read_model_file
from pitscope.probe_fitting import fit_defect_probe, marked_samples, set_pixel_threshold
from pitscope.seeding import numpy_rng
from pitscope.training import chance_record, train

log = logging.getLogger(__name__)


def at_scoring_size(cfg: Config) -> Config:
    """cfg, or with score.image_size set apart from data.image_size a copy of it whose
    data.image_size is the scoring size (what the Detector resizes to and the model file records)."""
    size = cfg.score.image_size
    if size is None or size == cfg.data.image_size:
        return cfg
    scored = copy.deepcopy(cfg)
    scored.data.rescale(size)
    return scored


def scoring_config(cfg: Config, dataset):
    """(cfg, training dataset) at the scoring size (`at_scoring_size`), the training images read
    again at that size when it differs."""
    scored = at_scoring_size(cfg)
    if scored is cfg:
        return cfg, dataset
    log.info(
        "scorers fitted at %d x %d (the network trained at %d x %d)",
        *scored.data.shape,
        *cfg.data.shape,
    )
    return scored, build_dataset(scored.data, "train", scored.seed)


def fit(
    config: Config | str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    progress: bool = True,
    save: bool = True,
) -> Detector | None:
    """Train the network on the config's defect-free images, fit its scorers, calibrate its
    thresholds and (with `save`) write OUTPUT_DIR/model.pt.

    config: a Config, a preset name or YAML path ("cpu", "demo", "paper"), or None for the
    defaults; overrides: `section.key=value` strings as the CLI's --set takes them.
    Unreadable training files are skipped (or refused, as data.on_bad_file says) and named in
    the model's metadata["training"]["skipped_files"]. Under torchrun every process trains its
    share and only rank 0 fits and returns the Detector; the others return None.

    >>> detector = fit("demo", ["train.epochs=1", "output_dir=runs/try"])  # doctest: +SKIP
    >>> detector.predict("photo.jpg").is_defective  # doctest: +SKIP
    """
    cfg = apply_overrides(config, overrides) if isinstance(config, Config) else load_config(config, overrides)
    main = distributed.context().is_main
    progress = progress and main
    prepare_split_file(cfg)
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    validate(cfg)  # again: data.keep_aspect may have set the shape the crops are checked against
    bad = dataset.check(progress=progress)
    for path, reason in bad if main else ():
        log.warning("skipped bad file: %s: %s", path, reason)
    log.info("training on %d defect-free images (%s), output in %s", len(dataset), cfg.data.format, cfg.output_dir)
    try:
        result = train(cfg, dataset, resume=resume, progress=progress)
    finally:
        distributed.teardown()
    if not main:
        return None
    cfg, dataset = scoring_config(cfg, dataset)
    detector = Detector(cfg, result.n_kinds, net=result.model)
    detector.fit(dataset, progress=progress)
    detector.metadata["training"] = {
        "images": len(dataset),
        "skipped_files": [p for p, _ in bad],
        "epochs": result.epochs_done,
        "steps": result.steps,
        "minutes": round(result.elapsed_s / 60, 2),
        "stopped_by_budget": result.stopped_by_budget,
        "precision": result.precision,
        "losses": [
            {k: v if isinstance(v, int) else round(float(v), 5) for k, v in epoch.items()} for epoch in result.history
        ],
    }
    if result.rollbacks:
        detector.metadata["training"]["rollbacks"] = result.rollbacks
    near_chance = chance_record(result.history, cfg.model.head, result.n_kinds)
    if near_chance is not None:
        # kept with the model: the inspection page and the report repeat the warning
        detector.metadata["training"]["classifier_near_chance"] = near_chance
        log.warning(
            "the pseudo-defect classifier ended near chance (cross-entropy %.3f in the last epoch, %.3f "
            "at chance): the network learnt little from telling pasted pseudo-defects apart and its maps "
            "may miss the defects; train again with another seed, or more epochs (train.epochs)",
            near_chance["cross_entropy"],
            near_chance["chance"],
        )
    labelled = list(result.labelled)  # the labelled photos pasted from: never to be scored as test images
    if cfg.score.defect_probe:
        defects = load_labelled_defects(str(cfg.data.labelled_defects), cfg.data.on_bad_file)
        fit_defect_probe(detector, defects, dataset, progress=progress)
        labelled = labelled or [{"name": d.path.name, "sha256": d.sha256} for d in defects]
    if labelled:
        detector.metadata["labelled_defects"] = labelled
    if cfg.train.init_from:
        detector.metadata["training"]["init_from"] = str(cfg.train.init_from)
    if save:
        detector.save(Path(cfg.output_dir) / "model.pt")
    return detector


# The settings of the model's config that `finetune`'s probe route may change: all else stays as
# the model was fitted, since its Gaussians and image threshold are kept (and the seed draws which
# training photos were held back from them).
PROBE_KEYS = ("data.on_bad_file", "score.batch_size", "score.pixel_threshold_quantile", "score.pixel_threshold_from")


def _with_probe(model: Path, labelled_defects: str | Path, overrides: list[str], progress: bool):
    """(`model` rebuilt with an unfitted defect probe and maps taken as they are, the marked photos,
    its defect-free training photos): the setting-up that `finetune_probe` and `anchor_probe` share.
    Refuses a model whose training photos are no longer the ones it was fitted on."""
    base = Detector.load(model)
    if base.cfg.score.pixel_method != "padim":
        raise ValueError(
            f"finetune --route probe reads PaDiM maps; {model} has score.pixel_method={base.cfg.score.pixel_method}"
        )
    settings = [f"data.labelled_defects={labelled_defects}", "score.defect_probe=true", "score.map_normalisation=none"]
    cfg = apply_overrides(base.cfg, [*settings, *overrides])
    detector = Detector(cfg, base.n_kinds, net=base.net)
    missing, unexpected = detector.load_state_dict(base.state_dict(), strict=False)
    if unexpected or not all(k.startswith("defect_probe.") for k in missing):
        raise ValueError(
            f"{model}: its state does not fit a detector with a defect probe ({(unexpected or missing)[0]})"
        )
    detector.metadata = {k: copy.deepcopy(v) for k, v in base.metadata.items() if k != "version"}
    defects = load_labelled_defects(str(labelled_defects), cfg.data.on_bad_file)
    dataset = build_dataset(cfg.data, "train", cfg.seed)  # the model's config is at its scoring size
    for path, reason in dataset.check(progress=progress):
        log.warning("skipped bad file: %s: %s", path, reason)
    fitted_on = base.metadata.get("training", {}).get("images")
    if fitted_on is not None and fitted_on != len(dataset):
        raise ValueError(
            f"{model} was fitted on {fitted_on} training photos and {len(dataset)} are there now: the photos its "
            "Gaussians never saw are not known; refit it first (pitscope refit)"
        )
    labelled = detector.metadata.get("labelled_defects", [])  # those that trained its network, if any
    known = {d["sha256"] for d in labelled}
    labelled += [{"name": d.path.name, "sha256": d.sha256} for d in defects if d.sha256 not in known]
    detector.metadata["labelled_defects"] = labelled
    return detector, defects, dataset


def finetune_probe(
    model: str | Path,
    labelled_defects: str | Path,
    output_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> Detector:
    """`model` with a defect probe fitted on the marked photos in `labelled_defects`
    (`pitscope.probe_fitting`): its network, Gaussians and image threshold stay, its maps become
    the probe's P(defect), taken as they are (score.map_normalisation none), and its pixel
    threshold is set again. Writes OUTPUT_DIR/model.pt, never over `model`; the new model names the
    labelled photos (SHA-256), so `evaluate` leaves them out. overrides: only the keys of PROBE_KEYS.

    >>> detector = finetune_probe("runs/cpu/model.pt", "marked/", "runs/probe")  # doctest: +SKIP
    """
    model, out = Path(model), Path(output_dir)
    if (out / "model.pt").resolve() == model.resolve():
        raise ValueError(f"finetune: the output folder {out} holds the model itself; pick another")
    other = [o for o in overrides if o.partition("=")[0] not in PROBE_KEYS]
    if other:
        raise ValueError(
            f"finetune --route probe keeps the model's network and Gaussians, so it takes only "
            f"{', '.join(PROBE_KEYS)}; got {other[0]}"
        )
    detector, defects, dataset = _with_probe(model, labelled_defects, [f"output_dir={out}", *overrides], progress)
    detector.metadata["probe_from"] = str(model)
    fit_defect_probe(detector, defects, dataset, progress=progress)
    detector.save(out / "model.pt")
    return detector


def anchor_probe(model: str | Path, labelled_defects: str | Path, progress: bool = True) -> Detector:
    """The supervised-only anchor of the few-labels benchmark: `model` with a probe over its stage
    features alone, fitted on the marked photos in `labelled_defects` alone (their marked and
    unmarked positions; no defect-free photo, no Gaussian distance). Its maps are that probe's;
    its image side and image threshold are `model`'s, its pixel threshold is set again on
    held-back maps as `finetune_probe` sets it. Not saved: it exists to be measured."""
    detector, defects, dataset = _with_probe(Path(model), labelled_defects, [], progress)
    detector.defect_probe = DefectProbe(inputs="features")
    x, y = marked_samples(detector, defects, dataset[0].image.shape[:2], numpy_rng(detector.cfg.seed, 11))
    detector.defect_probe.fit(x[:, :-1], y)
    set_pixel_threshold(detector, dataset, progress)
    return detector


# What `finetune` changes of the model's config before the caller's overrides: a segmentation head
# learns the pasted defects (the marked ones among them) and draws the maps, its probabilities
# taken as they are (no division by each map's mean); a short run.
FINETUNE = (
    "model.segment=true",
    "score.pixel_method=segmentation",
    "score.map_normalisation=none",
    "train.epochs=5",
    "train.budget_minutes=10",
    "train.lr=0.01",
)


def finetune(
    model: str | Path,
    labelled_defects: str | Path,
    output_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> Detector | None:
    """Train `model`'s network further with the marked defects of the photos in `labelled_defects`
    pasted beside its pseudo-defects (`data.labelled_defects`), then fit and calibrate as `fit`;
    writes OUTPUT_DIR/model.pt, never over `model`. The config is the model's with FINETUNE and
    then `overrides` applied. The new model names the labelled photos (SHA-256) in its metadata,
    so `evaluate` leaves them out.

    >>> detector = finetune("runs/cpu/model.pt", "marked/", "runs/finetuned")  # doctest: +SKIP
    """
    model, out = Path(model), Path(output_dir)
    if (out / "model.pt").resolve() == model.resolve():
        raise ValueError(f"finetune: the output folder {out} holds the model itself; pick another")
    cfg = from_dict(read_model_file(model)["config"])
    cfg = apply_overrides(
        cfg,
        [
            *FINETUNE,
            f"data.labelled_defects={labelled_defects}",
            f"train.init_from={model}",
            "model.weights=none",
            f"output_dir={out}",
            *overrides,
        ],
    )
    return fit(cfg, progress=progress)


def load_model_or_checkpoint(path: str | Path) -> Detector:
    """A saved model (model.pt), or the network of a training checkpoint or snapshot."""
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys()
    except Exception as exc:
        raise ValueError(f"{path} is not a pitscope model file: {exc}") from exc
    return Detector.from_checkpoint(path) if "model" in keys and "state_dict" not in keys else Detector.load(path)


def reference_records(paths: Sequence[str | Path]) -> list[Record]:
    """Defect-free reference photos as records: each path an image file or a folder of them (its
    images directly inside). Raises FileNotFoundError for a missing path and DatasetLayoutError
    for a folder without images or a file that is not an image."""
    records: list[Record] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            images = list_images(entry)
            if not images:
                raise DatasetLayoutError(f"{entry}: no reference images (looked for {' '.join(IMAGE_SUFFIXES)})")
        elif entry.is_file():
            if not is_image_file(entry):
                raise DatasetLayoutError(f"{entry}: not an image file ({' '.join(IMAGE_SUFFIXES)})")
            images = [entry]
        else:
            raise FileNotFoundError(f"reference photos: no such file or folder: {entry}")
        records += [Record(image, 0) for image in images]
    return records


def with_references(dataset: SampleSet, extra: Sequence[Record], cfg: Config) -> JoinedSampleSet:
    """The training photos, then the reference photos `extra`, as one defect-free sample set (the
    references read as cfg.data reads images: its shape, on_bad_file and cache). A reference that
    is already a training photo, or named twice, is refused by name."""
    seen = {Path(p).resolve() for p in dataset.paths}
    for record in extra:
        path = record.path.resolve()
        if path in seen:
            raise DatasetLayoutError(f"{record.path}: a reference photo named twice, or already a training photo")
        seen.add(path)
    refs = AnomalyDataset(
        extra, size=cfg.data.shape, on_bad_file=cfg.data.on_bad_file, cache=cfg.data.cache, name="references"
    )
    return JoinedSampleSet([dataset, refs], name=f"{getattr(dataset, 'name', 'training')}+references")


def kept_references(model: Detector, source: str | Path) -> list[Path]:
    """The reference photos `model` was fitted on (metadata["references"]), which a refit fits
    again. Raises FileNotFoundError naming the first one that is gone."""
    paths = [Path(entry["path"]) for entry in model.metadata.get("references", [])]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{source} was fitted on the reference photo {path}, which is gone: a refit fits a model's "
                "references again (restore it, or refit the model the references were added to)"
            )
    return paths


def refit(
    model: Detector,
    cfg: Config,
    source: str | Path,
    progress: bool = True,
    references: Sequence[str | Path] = (),
) -> Detector:
    """A new Detector with `model`'s network, its scorers and thresholds fitted again on cfg's
    training split under cfg's score.* settings. Of `model`'s metadata it keeps "training";
    "refit_from" records `source`. Unreadable training files are skipped (logged).

    references: defect-free photos fitted beside the training split (image files or folders of
    them), e.g. a new camera position's first good photos: the Gaussians learn their look without
    training the network again. They join the training photos as they are, held-back calibration
    photos included (`split_calibration` draws over both). The model's own references are fitted
    again. metadata["references"] lists every one as {"path" (resolved), "sha256"}; `evaluate`
    leaves them out of a measurement. Raises ValueError when none of the references is readable.
    With score.image_size apart from data.image_size the scorers are fitted at that height (cfg
    is left as it was; the new Detector's data.image_size is the scoring size)."""
    cfg = at_scoring_size(cfg)
    detector = Detector(cfg, model.n_kinds, net=model.net)
    detector.metadata = {k: v for k, v in model.metadata.items() if k in ("training",)}
    detector.metadata["refit_from"] = str(source)
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    old = kept_references(model, source)
    fitted_before = {p.resolve() for p in old}
    new = [r for r in reference_records(references) if r.path.resolve() not in fitted_before]
    extra = [Record(path, 0) for path in old] + new
    if extra:
        dataset = with_references(dataset, extra, cfg)
    for path, reason in dataset.check(progress=progress):
        log.warning("skipped bad file: %s: %s", path, reason)
    if extra:
        kept = {Path(p).resolve() for p in dataset.paths}
        fitted = [r.path.resolve() for r in extra if r.path.resolve() in kept]
        if not fitted:
            raise ValueError(f"none of the {len(extra)} reference photo(s) could be read")
        detector.metadata["references"] = [{"path": str(p), "sha256": file_sha256(p)} for p in fitted]
    detector.fit(dataset, progress=progress)
    if cfg.score.defect_probe:  # the probe reads the new Gaussians' distances: fitted again on them
        defects = load_labelled_defects(str(cfg.data.labelled_defects), cfg.data.on_bad_file)
        fit_defect_probe(detector, defects, dataset, progress=progress)
        detector.metadata["labelled_defects"] = model.metadata.get("labelled_defects", [])
    return detector
