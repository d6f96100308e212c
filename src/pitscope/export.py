"""Export a fitted Detector to ONNX and TorchScript, with a parity check against torch.

The exported graph holds everything `Detector.forward` computes (network, image scorer, pixel
scorer or segmentation head, map upsampling and smoothing), the ImageNet normalisation before
it and the calibrated threshold after it, so another runtime needs nothing else:

    input  "image":        float32 (B, 3, H, W), RGB in [0, 1], (H, W) = cfg.data.shape: an
                           image resized to H x W (bilinear, as `pitscope.tensors.resize_image`)
                           and divided by 255. The ImageNet normalisation is inside the graph.
    output "score":        float32 (B,) image scores (Mahalanobis distance).
    output "anomaly_map":  float32 (B, H, W) smoothed per-pixel scores, as shown (with
                           `score.map_background_window` / `score.map_sharpen_window`
                           their broad background removed, each blob narrowed).
    output "is_defective": bool (B,) score > the detector's threshold, baked in as a constant.
    output "region_map":   float32 (B, H, W) the map the defect regions are cut from (the map
                           before those steps; anomaly_map itself without them).

The names are those of `pitscope.inference.Prediction`'s fields. B is dynamic.
The ONNX file's metadata (and the TorchScript file's extra file "pitscope.json") also carry
the threshold, the pixel threshold that outlines defect regions, and the image size (height,
and "image_shape": "H W").

ONNX goes through the TorchScript-based exporter (`torch.onnx.export(dynamo=False)`):
`torch.export` refuses `PatchGaussianScorer.score_map`, which compares the feature-map size
with its `map_size_` buffer (a data-dependent guard), and then tensors made under
`Detector.forward`'s `inference_mode`; tracing runs the check once, records through
`inference_mode`, and gives a graph with a dynamic batch axis. (The legacy exporter, like `torch.jit.trace` behind the
TorchScript export, is deprecated since torch 2.9 but still shipped.) Like timm's `onnx_export(check_forward=True)`, each export
is checked: onnxruntime (or the reloaded TorchScript module) runs a batch of images, and the
largest differences from torch must stay within `RTOL` (1e-3) times the largest torch value
of that output. The check also draws the defect regions from both (`compare_regions`) and
reports how far they differ.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pitscope import __version__
from pitscope.defect_regions import REGION_SETTINGS
from pitscope.evaluation import regions_at_settings
from pitscope.inference import Detector
from pitscope.prediction import Prediction
from pitscope.scoring import shown_map, shown_steps
from pitscope.tensors import IMAGENET_MEAN, IMAGENET_STD, Shape, as_shape, resize_image

INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, str, str, str] = (*Prediction._fields[:3], "region_map")
assert OUTPUT_NAMES[3] in Prediction._fields
DEFAULT_OPSET = 17
RTOL = 1e-3  # parity tolerance, relative to the largest absolute torch value of each output
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # format -> file suffix


# the check's results before a check (None) or without one
CHECK_KEYS = (
    "max_abs_diff_score",
    "max_abs_diff_map",
    "decisions_equal",
    "tolerance_score",
    "tolerance_map",
    "regions_equal_images",
    "regions_min_iou",
    "regions_max_differing_fraction",
)
UNCHECKED: dict = {**dict.fromkeys(CHECK_KEYS), "n_images": 0}


class ParityError(RuntimeError):
    """The exported model's outputs differ from torch's by more than the tolerance."""


class ExportModule(nn.Module):
    """A fitted Detector as one graph: image in [0, 1] -> (score, anomaly_map, is_defective, region_map).

    image (B, 3, H, W) float32 RGB in [0, 1], (H, W) = cfg.data.shape ->
        score (B,) float32, anomaly_map (B, H, W) float32, is_defective (B,) bool,
        region_map (B, H, W) float32.
    The ImageNet normalisation of `images_to_batch`, then `Detector.forward` itself (whatever
    its pixel method) for the score and the region map, the steps from it to the map shown
    (`pitscope.scoring.shown_map`), and the comparison with the threshold, copied
    at construction.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffer: ImageNet's channel means
    std: torch.Tensor  # (1, 3, 1, 1) buffer: ImageNet's channel deviations
    threshold: torch.Tensor  # () buffer: the detector's image threshold

    def __init__(self, detector: Detector):
        super().__init__()
        if detector.cfg.score.image_method != "map_max" and not detector.image_scorer.is_fitted:
            raise ValueError("the detector is not fitted; call fit() or load a trained model.pt")
        if not torch.isfinite(detector.threshold):
            raise ValueError("the detector has no calibrated threshold")
        self.detector = detector
        self.image_shape = detector.cfg.data.shape  # (H, W)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("threshold", detector.threshold.detach().clone())
        sc = detector.cfg.score
        self.shown = shown_steps(sc)
        self.to(detector.threshold.device)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (image - self.mean) / self.std  # (B, 3, H, W), as images_to_batch
        score, maps = self.detector(x)  # (B,), (B, H, W): the map the regions are cut from
        shown = shown_map(maps, *self.shown)  # (B, H, W)
        return score, shown, score > self.threshold, maps

    def metadata(self) -> dict[str, str]:
        """What a runtime needs beside the graph, as strings (ONNX metadata_props)."""
        return {
            "pitscope_version": str(__version__),
            "image_size": str(self.image_shape[0]),
            "image_shape": "{} {}".format(*self.image_shape),
            "input": f"{INPUT_NAME}: float32 (B, 3, {self.image_shape[0]}, {self.image_shape[1]}) RGB in [0, 1]",
            "threshold": repr(float(self.threshold)),
            "pixel_threshold": repr(float(self.detector.pixel_threshold)),
            # how pitscope draws regions from region_map (`pitscope.defect_regions`), as JSON
            "regions": json.dumps({k: getattr(self.detector.cfg.score, k) for k in REGION_SETTINGS}),
        }


# -- images for the parity check ------------------------------------------------------------------
def to_export_input(images: Sequence[np.ndarray], size: Shape) -> torch.Tensor:
    """Images (h, w, 3) uint8 -> the graph input (B, 3, H, W) float32 in [0, 1], (H, W) = size."""
    batch = np.stack([resize_image(im, size) for im in images])  # (B, H, W, 3) uint8
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


def random_images(size: Shape, n: int = 3, seed: int = 0) -> torch.Tensor:
    """n seeded uniform-noise images (n, 3, H, W) in [0, 1], (H, W) = size, the check's default input."""
    return torch.rand(n, 3, *as_shape(size), generator=torch.Generator().manual_seed(seed))


def read_check_images(sources: Sequence[str | Path], size: Shape, limit: int | None = None) -> torch.Tensor:
    """Read image files, or every image of folders (sorted), as the graph input (B, 3, H, W).

    At most `limit` images (the first ones, in the order given). FileNotFoundError when there
    are none; pitscope.data.types.BadImageError for an unreadable file.
    """
    from pitscope.data.imageio import list_images, read_image

    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        paths.extend(list_images(source) if source.is_dir() else [source])
    paths = paths[:limit] if limit is not None else paths
    if not paths:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, sources))}")
    return to_export_input([read_image(p) for p in paths], size)


def _check_input(module: ExportModule, images: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if images is None:
        return random_images(module.image_shape)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) if isinstance(images, np.ndarray) else images)
    expected = (3, *module.image_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"check images must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
    return x.float().cpu()


# -- parity ---------------------------------------------------------------------------------------
def compare_outputs(reference: Sequence[torch.Tensor], outputs: Sequence[np.ndarray], threshold: float) -> dict:
    """Largest differences of (score, anomaly_map, is_defective, region_map) outputs from torch's
    (max_abs_diff_map and tolerance_map: of the map whose difference is the larger share of its
    tolerance).

    Raises ParityError when a difference exceeds RTOL times the largest absolute torch value of
    its output, or when a decision differs for an image whose torch score is farther from the
    threshold than the score tolerance (closer than that, a flip is rounding, not a bug).
    """
    refs = [r.detach().cpu().double().numpy() for r in reference]
    outs = [np.asarray(o, dtype=np.float64) for o in outputs]
    if len(outs) != len(OUTPUT_NAMES) or any(o.shape != r.shape for o, r in zip(outs, refs)):
        raise ParityError(f"output shapes {[o.shape for o in outs]} differ from torch's {[r.shape for r in refs]}")
    ref_score, ref_decision = refs[0], refs[2]
    score, decision = outs[0], outs[2]
    tol_score = RTOL * max(float(np.abs(ref_score).max()), 1e-12)
    diff_score = float(np.abs(score - ref_score).max())
    # anomaly_map and region_map, each against its own largest value; the worse one is reported
    pairs = [
        (float(np.abs(outs[i] - refs[i]).max()), RTOL * max(float(np.abs(refs[i]).max()), 1e-12), OUTPUT_NAMES[i])
        for i in (1, 3)
    ]
    diff_map, tol_map, map_name = max(pairs, key=lambda p: np.inf if np.isnan(p[0]) else p[0] / p[1])
    flipped = decision != ref_decision
    result = {
        "max_abs_diff_score": diff_score,
        "max_abs_diff_map": diff_map,
        "decisions_equal": not flipped.any(),
        "tolerance_score": tol_score,
        "tolerance_map": tol_map,
    }
    problems = []
    if not diff_score <= tol_score:  # also catches NaN
        problems.append(f"score differs by {diff_score:.3g} > {tol_score:.3g}")
    if not diff_map <= tol_map:
        problems.append(f"{map_name} differs by {diff_map:.3g} > {tol_map:.3g}")
    if (flipped & (np.abs(ref_score - threshold) > tol_score)).any():
        problems.append(f"is_defective differs for images {np.flatnonzero(flipped).tolist()}")
    if problems:
        raise ParityError("exported model disagrees with torch: " + "; ".join(problems))
    return result


def compare_regions(
    reference: Sequence[torch.Tensor], outputs: Sequence[np.ndarray], pixel_threshold: float, score
) -> dict:
    """How far the defect regions drawn from the exported outputs differ from those drawn from torch's.

    Both are drawn as pitscope draws them (`pitscope.evaluation.regions_at_settings` at `score`,
    the model's score section), each from its own region_map and decisions. Returns
    {"regions_equal_images": images whose region masks are identical, "regions_min_iou": the
    lowest intersection over union of the two masks over images where either has a region (1.0
    when none has), "regions_max_differing_fraction": the largest share of a photo's pixels in
    one mask and not the other}. Reported, not enforced: where the maps agree within the map
    tolerance, a mask can still differ at pixels on a region's level.
    """
    ref_maps = reference[3].detach().cpu().float().numpy()
    ref_decisions = reference[2].detach().cpu().numpy().astype(bool)
    maps = np.asarray(outputs[3], dtype=np.float32)
    decisions = np.asarray(outputs[2]).astype(bool)
    ref_regions = regions_at_settings(ref_maps, ref_decisions, pixel_threshold, score)  # (B, H, W)
    regions = regions_at_settings(maps, decisions, pixel_threshold, score)
    axes = (1, 2)
    union = (ref_regions | regions).sum(axis=axes)
    differing = (ref_regions ^ regions).sum(axis=axes)
    drawn = union > 0
    iou = 1.0 - differing[drawn] / union[drawn]
    return {
        "regions_equal_images": int((differing == 0).sum()),
        "regions_min_iou": float(iou.min()) if drawn.any() else 1.0,
        "regions_max_differing_fraction": float(differing.max() / ref_regions[0].size),
    }


def _merge(first: dict, second: dict) -> dict:
    """The worse of two comparisons (batch run, single-image run); the batch's image counts."""
    merged = dict(first)
    for key in ("max_abs_diff_score", "regions_max_differing_fraction"):
        merged[key] = max(first[key], second[key])
    # a map's difference goes with its own tolerance: the run whose map is nearer its tolerance
    worse = max((first, second), key=lambda r: r["max_abs_diff_map"] / max(r["tolerance_map"], 1e-300))
    merged["max_abs_diff_map"], merged["tolerance_map"] = worse["max_abs_diff_map"], worse["tolerance_map"]
    merged["regions_min_iou"] = min(first["regions_min_iou"], second["regions_min_iou"])
    merged["decisions_equal"] = first["decisions_equal"] and second["decisions_equal"]
    return merged


def _check(module: ExportModule, run, images) -> dict:
    """Run the export (`run`: (B, 3, H, W) tensor -> 4 arrays) and torch on the same images.

    The whole batch is compared, and its first image alone too (the dynamic batch axis).
    """
    x = _check_input(module, images)
    device = module.threshold.device
    with torch.no_grad():
        reference = module(x.to(device))
    threshold = float(module.threshold)
    pixel_threshold = float(module.detector.pixel_threshold)
    score = module.detector.cfg.score

    def compare(ref: Sequence[torch.Tensor], out: Sequence[np.ndarray]) -> dict:
        return {**compare_outputs(ref, out, threshold), **compare_regions(ref, out, pixel_threshold, score)}

    result = compare(reference, run(x))
    if len(x) > 1:
        result = _merge(result, compare([r[:1] for r in reference], run(x[:1])))
    result["n_images"] = len(x)
    return result


# -- export ---------------------------------------------------------------------------------------
def export_onnx(
    detector: Detector,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    images: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """Write the detector as one ONNX graph (dynamic batch) and check it with onnxruntime.

    images: (B, 3, H, W) float in [0, 1] for the check (default: `random_images`).
    Returns {"path", "opset", the `CHECK_KEYS` (`compare_outputs`, `compare_regions`), "n_images"}
    (the CHECK_KEYS None without a check).
    Raises ParityError when the check fails; the file is written either way.
    Puts the detector in eval mode.
    """
    import onnx

    module = ExportModule(detector).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = random_images(module.image_shape, n=2).to(module.threshold.device)
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks and fitted-state tests become constants of the trace: expected, since
        # every input has the model's image size. The legacy exporter is chosen on purpose.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter and its internals
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(path))
    for output in model.graph.output:  # the exporter leaves the maps' H x W symbolic
        if output.name in ("anomaly_map", "region_map"):
            for dim, side in zip(output.type.tensor_type.shape.dim[1:], module.image_shape):
                dim.ClearField("dim_param")
                dim.dim_value = side
    onnx.helper.set_model_props(model, module.metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

    result = {"path": str(path), "opset": opset, **UNCHECKED}
    if check:
        try:
            session = onnx_session(path)
        except Exception as exc:  # onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception alone
            raise RuntimeError(f"onnxruntime cannot load the exported {path}: {exc}") from exc
        result.update(_check(module, lambda x: session.run(None, {INPUT_NAME: x.numpy()}), images))
    return result


def onnx_session(path: str | Path):
    """An onnxruntime CPU session for an exported file, using torch's intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_torchscript(
    detector: Detector,
    path: str | Path,
    check: bool = True,
    images: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """Write the detector as a traced TorchScript module (dynamic batch), reload and check it.

    Same inputs, outputs and return dict (without "opset") as `export_onnx`; the metadata is
    the extra file "pitscope.json". Load with `torch.jit.load(path)`.
    """
    module = ExportModule(detector).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = random_images(module.image_shape, n=2).to(module.threshold.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)  # deprecated, still asked for
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"pitscope.json": json.dumps(module.metadata())})

    result = {"path": str(path), **UNCHECKED}
    if check:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)
            loaded = torch.jit.load(str(path), map_location=module.threshold.device)

        def run(x: torch.Tensor) -> list[np.ndarray]:
            with torch.no_grad():
                return [t.cpu().numpy() for t in loaded(x.to(module.threshold.device))]

        result.update(_check(module, run, images))
    return result


# -- output files ---------------------------------------------------------------------------------
def output_paths(model: Path, formats: list[str], out: str | None) -> dict[str, Path]:
    """Where each format goes: OUT as a file (one format, OUT with a suffix) or a folder."""
    if out is not None and Path(out).suffix and not Path(out).is_dir():
        if len(formats) > 1:
            raise ValueError(f"--out {out} names one file, but {len(formats)} formats are exported; give a folder")
        return {formats[0]: Path(out)}
    folder = Path(out) if out is not None else model.parent
    return {fmt: folder / (model.stem + FORMATS[fmt]) for fmt in formats}
