"""pitscope: find pitting and other surface defects from images, trained on defect-free images alone.

    from pitscope import Detector, fit
    detector = fit("demo", ["output_dir=runs/try"])         # train, fit the scorers, calibrate, save
    detector = Detector.load("runs/try/model.pt")
    prediction = detector.predict("photo.jpg")               # a Prediction
    prediction.score, prediction.is_defective, prediction.regions
    detector = finetune_probe("runs/try/model.pt", "marked/", "runs/marked")   # + photos with marked defects

The names below are imported when first used, so that `import pitscope.serve` (deploy code)
loads nothing of training.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "Config": "pitscope.config",
    "load_config": "pitscope.config",
    "Region": "pitscope.defect_regions",
    "fit": "pitscope.fitting",
    "finetune": "pitscope.fitting",
    "finetune_probe": "pitscope.fitting",
    "Detector": "pitscope.inference",
    "Prediction": "pitscope.prediction",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pitscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
