"""anomalib peers: a clear message without anomalib; with it (the `bench` extra), a tiny run."""

import sys

import numpy as np
import pytest
import torch

from pitscope.config import load_config
from pitscope.data import build_dataset
from pitscope.models.backbone import build_resnet18
from pitscope.peers import PEERS, PeerModel, require_anomalib

TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=2",
    "data.synthetic.n_test_defect=2",
    "score.batch_size=4",
]


def test_missing_anomalib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "anomalib", None)  # import anomalib raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'pitscope\[bench\]'"):
        require_anomalib()
    with pytest.raises(ImportError, match="anomalib"):
        PeerModel("padim", load_config(None, TINY))


def test_unknown_peer_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: padim, patchcore"):
        PeerModel("draem", load_config(None, TINY))


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_scores_pitscope_data_with_pitscope_weights(name):
    pytest.importorskip("anomalib")
    cfg = load_config(None, [*TINY, "seed=3"])
    peer = PeerModel(name, cfg)
    torch.manual_seed(3)
    expected = build_resnet18("none").state_dict()
    for key, value in peer.model.feature_extractor.feature_extractor.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    peer.fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)
    scores, maps = peer.score_dataset(build_dataset(cfg.data, "test", cfg.seed), progress=False)
    assert scores.shape == (4,) and maps.shape == (4, 64, 64)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), 1.0, rtol=1e-4)  # score.map_normalisation=image_mean
