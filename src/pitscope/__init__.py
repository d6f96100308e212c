"""pitscope: find pitting and other surface defects from images, trained on defect-free images alone.

    from pitscope import Detector, fit
    detector = fit("demo", ["output_dir=runs/try"])         # train, fit the scorers, calibrate, save
    detector = Detector.load("runs/try/model.pt")
    prediction = detector.predict("photo.jpg")               # a Prediction
    prediction.score, prediction.is_defective, prediction.regions
"""

__version__ = "0.1.0"

from pitscope.config import Config, load_config  # noqa: E402
from pitscope.defect_regions import Region  # noqa: E402
from pitscope.fitting import fit  # noqa: E402
from pitscope.inference import Detector, Prediction  # noqa: E402

__all__ = ["Config", "Detector", "Prediction", "Region", "__version__", "fit", "load_config"]
