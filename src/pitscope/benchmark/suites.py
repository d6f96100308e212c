"""What the benchmark suites compare: the paper's numbers (BSData tables 3 and 6-9, MVTec AD
tables 4-5), the variants (a row each: config overrides, or an anomalib peer) and the suites."""

from __future__ import annotations

from dataclasses import dataclass

# -- the paper's numbers ---------------------------------------------------------------------
# (image AUROC, pixel AUROC) in %, from X. Wang et al., "A Double Self-Supervised Model for Pitting
# Detection on Ball Screws", IEEE Access 12, 2024 (shared/paper/), BSData, tables 3 and 6-9.
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    # Table 3: against CutPaste [9] and SSPCAB [7], same ResNet-18 and settings.
    "table3": {"ours": (97.42, 94.57), "cutpaste": (95.63, 93.89), "sspcab": (95.82, 94.01)},
    # Table 6: RGB vs HOG target of the masked task; its HOG row equals table 7's "HOG" row,
    # so it is measured without the noise-patch classifier.
    "table6": {"rgb_only": (94.63, 93.55), "hog_only": (95.16, 93.75)},
    # Table 7: "HOG" alone, "NP" (the pseudo-defect classifier) alone, both.
    "table7": {"hog_only": (95.16, 93.75), "classify_only": (96.08, 94.02), "ours": (97.42, 94.57)},
    # Table 8: pseudo-defect kinds ("Noise + Scar patch" is the full model).
    "table8": {
        "scar": (95.49, 94.23),
        "normal": (95.43, 93.89),
        "scar_normal": (96.04, 94.53),
        "noise": (97.19, 93.85),
        "ours": (97.42, 94.57),
    },
    # Table 9: feature mask of the masked task ("No", "Dropout" p = 0.5, "Mask" 50%, "MSCM").
    "table9": {
        "mask_none": (96.75, 93.05),
        "mask_dropout": (96.45, 92.86),
        "mask_rectangle": (96.84, 93.24),
        "ours": (97.42, 94.57),
    },
}

MVTEC_OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
# MVTec AD per category, in the order MVTEC_OBJECTS + MVTEC_TEXTURES, from the same paper: table 4
# (image AUROC: "ours", CutPaste [9], SSPCAB [7]) and table 5 (pixel AUROC: "Ours", CutPaste [9],
# PaDiM [42] with ResNet-18).
_TABLE4 = {
    "ours": (100.00, 95.60, 85.84, 99.64, 96.48, 95.23, 81.88, 99.72, 96.71, 98.90, 97.19, 98.07, 100.00, 99.86, 99.03),
    "cutpaste": (
        98.30,
        80.60,
        96.20,
        97.30,
        99.30,
        92.40,
        86.30,
        98.30,
        95.50,
        99.40,
        93.10,
        99.90,
        100.00,
        93.40,
        98.60,
    ),
    "sspcab": (
        98.60,
        82.90,
        98.10,
        98.30,
        99.60,
        95.30,
        90.80,
        98.80,
        96.50,
        99.10,
        90.70,
        99.90,
        100.00,
        94.00,
        99.20,
    ),
}
_TABLE5 = {
    "ours": (96.64, 96.83, 97.72, 98.03, 96.48, 97.30, 98.32, 97.45, 97.28, 97.73, 98.79, 96.54, 99.10, 95.54, 95.38),
    "cutpaste": (
        97.60,
        90.00,
        97.40,
        97.30,
        93.10,
        95.70,
        96.70,
        98.10,
        93.00,
        99.30,
        98.30,
        97.50,
        99.50,
        90.50,
        95.50,
    ),
    "padim": (98.10, 95.80, 98.30, 97.70, 96.70, 94.70, 97.40, 98.70, 97.20, 98.20, 98.90, 94.90, 99.10, 91.20, 93.60),
}


def paper_mvtec(variant: str, category: str) -> tuple[float | None, float | None]:
    """The paper's (image, pixel) AUROC for a variant on an MVTec AD category; None where not reported."""
    categories = MVTEC_OBJECTS + MVTEC_TEXTURES
    if category not in categories:
        return None, None
    i = categories.index(category)
    image, pixel = _TABLE4.get(variant), _TABLE5.get(variant)
    return (image[i] if image else None), (pixel[i] if pixel else None)


# -- variants and suites ---------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of a table: config overrides on the preset, or an anomalib peer (pitscope.peers)."""

    label: str
    overrides: tuple[str, ...] = ()
    peer: str | None = None


# CutPaste (Li et al. 2021): the image classifier alone, no pixel branch; images scored by a
# Gaussian on the image embedding (score.image_features), pixels by patch-level scores (pitscope.patches),
# which have no map Gaussians to trim.
_CUTPASTE = ("model.target=none", "score.pixel_method=patch", "score.fit_trim=0")
_THREE_WAY = ("model.head=multiclass", "augment.kinds=[normal, scar]")

VARIANTS: dict[str, Variant] = {
    "ours": Variant("pitscope: noise + scar classifier, HOG target, MSCM"),
    "cutpaste": Variant("CutPaste 3-way (normal / cut-paste / scar)", (*_CUTPASTE, *_THREE_WAY)),
    "cutpaste_normal": Variant("CutPaste binary, normal patch", (*_CUTPASTE, "augment.kinds=[normal]")),
    "cutpaste_scar": Variant("CutPaste binary, scar patch", (*_CUTPASTE, "augment.kinds=[scar]")),
    "sspcab": Variant("CutPaste 3-way + SSPCAB", (*_CUTPASTE, *_THREE_WAY, "model.sspcab=true")),
    "padim": Variant("PaDiM (anomalib), ResNet-18", peer="padim"),
    "patchcore": Variant("PatchCore (anomalib), ResNet-18", peer="patchcore"),
    "hog_only": Variant("HOG target only, no classifier", ("model.classify=false",)),
    "rgb_only": Variant("RGB target only, no classifier", ("model.classify=false", "model.target=rgb")),
    "classify_only": Variant("pseudo-defect classifier only, no HOG", ("model.target=none",)),
    "scar": Variant("scar patch", ("augment.kinds=[scar]",)),
    "normal": Variant("normal patch", ("augment.kinds=[normal]",)),
    "scar_normal": Variant("scar + normal patch", ("augment.kinds=[scar, normal]",)),
    "noise": Variant("noise patch", ("augment.kinds=[noise]",)),
    "mask_none": Variant("no mask", ("model.mask_type=none",)),
    "mask_dropout": Variant("dropout 0.5", ("model.mask_type=dropout",)),
    "mask_rectangle": Variant("rectangle, 50% of the map", ("model.mask_type=rectangle",)),
}

SUITES: dict[str, tuple[str, ...]] = {
    "table3": ("ours", "cutpaste", "sspcab", "padim", "patchcore"),
    "table6": ("hog_only", "rgb_only"),
    "table7": ("hog_only", "classify_only", "ours"),
    "table8": ("scar", "normal", "scar_normal", "noise", "ours"),
    "table9": ("mask_none", "mask_dropout", "mask_rectangle", "ours"),
    "cutpaste": ("cutpaste_normal", "cutpaste_scar", "cutpaste"),
    "mvtec": ("ours",),
}
# Suites that switch the image classifier off in some rows: every row scores images by the pooled
# layer4, so that the rows differ by their training alone.
TASK_ABLATIONS = ("table6", "table7")
TITLES: dict[str, str] = {
    "table3": "Table 3: ours vs CutPaste vs SSPCAB, and anomalib's PaDiM and PatchCore (BSData)",
    "table6": "Table 6: HOG vs RGB target of the masked task (BSData)",
    "table7": "Table 7: the two self-supervised tasks (BSData)",
    "table8": "Table 8: pseudo-defect kinds (BSData)",
    "table9": "Table 9: feature mask of the masked task (BSData)",
    "cutpaste": "CutPaste's variants with patch-level localisation (BSData)",
    "mvtec": "Tables 4 and 5: MVTec AD per category",
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")
PAPER_EPOCHS = 800  # the cap on epochs when --budget sets the training time
