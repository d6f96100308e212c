from types import SimpleNamespace

import pytest
import torch

from pitscope.thresholds import set_thresholds


def holder(record=None):
    """What set_thresholds touches of a Detector: the two () float32 buffers and the metadata."""
    metadata = {} if record is None else {"calibration": record}
    return SimpleNamespace(threshold=torch.tensor(1.5), pixel_threshold=torch.tensor(0.25), metadata=metadata)


def test_set_thresholds_fills_the_buffers_and_records_them():
    detector = holder()
    replaced = set_thresholds(detector, {"source": "test", "threshold": None, "quantile": 0.9}, image=2.1, pixel=0.7)
    assert replaced is None
    assert float(detector.threshold) == pytest.approx(2.1) and float(detector.pixel_threshold) == pytest.approx(0.7)
    record = detector.metadata["calibration"]
    assert list(record) == ["source", "threshold", "quantile", "pixel_threshold"]  # a held key keeps its place
    assert record["threshold"] == float(detector.threshold)  # the buffer's float32 value
    assert record["pixel_threshold"] == float(detector.pixel_threshold)


def test_a_given_record_value_is_kept_and_an_unset_threshold_is_left_as_it_was():
    detector = holder()
    set_thresholds(detector, {"threshold": 2.1}, image=2.1)
    assert detector.metadata["calibration"] == {"threshold": 2.1, "pixel_threshold": 0.25}


def test_set_thresholds_returns_the_record_it_replaced():
    before = {"method": "held_back", "threshold": 1.5, "pixel_threshold": 0.25}
    detector = holder(before)
    replaced = set_thresholds(detector, {"source": "test"}, image=3.0)
    assert replaced is before
    assert detector.metadata["calibration"]["threshold"] == 3.0
    assert before == {"method": "held_back", "threshold": 1.5, "pixel_threshold": 0.25}  # left as it was
