"""CutPaste's patch-level maps: the crop grid, crop embeddings, the shared Gaussian, the map."""

import numpy as np
import pytest
import torch

from pitscope.config import ConfigError, load_config
from pitscope.data import build_dataset
from pitscope.inference import Detector
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.patches import SharedGaussianScorer, extract_patches, patch_embeddings, patch_map, patch_starts
from pitscope.scoring import GaussianScorer


@pytest.mark.parametrize(
    ("size", "patch", "stride", "expected"),
    [
        (256, 64, 16, list(range(0, 193, 16))),  # the default: 13 crops a side, the last flush
        (100, 32, 30, [0, 30, 60, 68]),  # the stride misses the edge: one more crop, flush with it
        (64, 64, 16, [0]),
    ],
)
def test_patch_starts_cover_every_pixel(size, patch, stride, expected):
    starts = patch_starts(size, patch, stride)
    assert starts == expected
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()


def test_patch_starts_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="patch_size"):
        patch_starts(32, 64, 16)
    with pytest.raises(ValueError, match="stride"):
        patch_starts(64, 32, 0)


def test_extract_patches_are_the_crops():
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    crops = extract_patches(x, 4, 3)  # rows 0 3 6, cols 0 3 6 8
    assert crops.shape == (2, 3, 4, 3, 4, 4)
    torch.testing.assert_close(crops[1, 2, 3], x[1, :, 6:10, 8:12])
    torch.testing.assert_close(crops[0, 1, 2], x[0, :, 3:7, 6:10])


def test_patch_map_is_the_mean_of_the_covering_crops():
    scores = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # crops of 3 px at rows/cols 0 and 2 of a 5 x 5 image
    amap = patch_map(scores, (5, 5), 3, 2)
    assert amap.shape == (1, 5, 5)
    assert amap[0, 0, 0] == 1 and amap[0, 4, 4] == 4 and amap[0, 0, 4] == 2 and amap[0, 4, 0] == 3
    assert amap[0, 2, 2] == pytest.approx(2.5)  # all four crops cover the centre
    assert amap[0, 0, 2] == pytest.approx(1.5)  # the two top crops
    constant = patch_map(torch.full((2, 13, 13), 7.0), (256, 256), 64, 16)
    torch.testing.assert_close(constant, torch.full((2, 256, 256), 7.0))
    with pytest.raises(ValueError, match="grid"):
        patch_map(torch.zeros(1, 3, 3), (5, 5), 3, 2)


def test_patch_embeddings_are_the_networks_embeddings_of_each_crop():
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(load_config(None, ["model.target=none"]).model).eval()
    x = torch.randn(2, 3, 64, 64)
    grid = patch_embeddings(net.backbone, x, 32, 16)  # 3 x 3 crops
    assert grid.shape == (2, 512, 3, 3)
    with torch.no_grad():
        one = net(x[1:2, :, 16:48, 32:64]).embedding[0]
    torch.testing.assert_close(grid[1, :, 1, 2], one, rtol=1e-4, atol=1e-5)


def test_shared_gaussian_is_one_gaussian_over_every_position():
    torch.manual_seed(0)
    grid = torch.randn(6, 5, 3, 4, dtype=torch.float64)  # (B, D, gh, gw)
    samples = grid.permute(0, 2, 3, 1).reshape(-1, 5)  # (B*gh*gw, D)
    shared = SharedGaussianScorer().double()
    shared.partial_fit(grid[:2]).partial_fit(grid[2:]).finalize()  # streamed
    reference = GaussianScorer().double().fit(samples)
    expected = reference.score(samples).reshape(6, 3, 4)
    torch.testing.assert_close(shared.score_map(grid), expected)

    fresh = SharedGaussianScorer().double()
    fresh.load_state_dict(shared.state_dict())
    torch.testing.assert_close(fresh.score_map(grid), expected)


PATCH = ["score.pixel_method=patch", "score.patch_size=32", "score.patch_stride=16"]


def test_detector_with_patch_maps_fits_scores_and_round_trips(tmp_path, fit_tiny_detector):
    from pitscope.config import from_dict, to_dict

    detector, path, cfg = fit_tiny_detector(tmp_path, "model.target=none", *PATCH)
    assert isinstance(detector.pixel_scorer, SharedGaussianScorer) and detector.pixel_scorer.is_fitted
    test = build_dataset(cfg.data, "test", cfg.seed)
    scores, maps = detector.score_dataset(test, progress=False)
    assert scores.shape == (len(test),) and maps.shape == (len(test), 64, 64)
    assert np.isfinite(maps).all() and np.isfinite(float(detector.pixel_threshold))

    loaded = Detector.load(path)
    assert to_dict(loaded.cfg)["score"] == to_dict(from_dict(to_dict(cfg)))["score"]
    scores2, maps2 = loaded.score_dataset(test, progress=False)
    np.testing.assert_allclose(scores2, scores, rtol=1e-5)
    np.testing.assert_allclose(maps2, maps, rtol=1e-4, atol=1e-5)


def test_config_checks_the_patch_size_only_for_patch_maps():
    load_config(None, ["data.image_size=32"])  # the default 64 px patch does not matter for padim
    with pytest.raises(ConfigError, match="score.patch_size"):
        load_config(None, ["data.image_size=32", "score.pixel_method=patch"])
    with pytest.raises(ConfigError, match="score.patch_stride"):
        load_config(None, ["score.pixel_method=patch", "score.patch_stride=0"])
    with pytest.raises(ConfigError, match="padim, segmentation, patch"):
        load_config(None, ["score.pixel_method=patches"])


def test_patch_maps_light_up_a_local_anomaly():
    from pitscope.models.backbone import Backbone

    torch.manual_seed(0)
    backbone = Backbone().eval()  # random weights: any local change moves the crops that see it
    generator = torch.Generator().manual_seed(1)
    normal = torch.randn(12, 3, 128, 128, generator=generator) * 0.3
    test = torch.randn(1, 3, 128, 128, generator=generator) * 0.3
    test[:, :, 84:100, 20:36] = 2.0  # a bright 16 px square
    scorer = SharedGaussianScorer().fit(patch_embeddings(backbone, normal, 32, 8))
    amap = patch_map(scorer.score_map(patch_embeddings(backbone, test, 32, 8)), (128, 128), 32, 8)[0]
    outside = amap.clone()
    outside[84:100, 20:36] = float("nan")
    assert amap[84:100, 20:36].mean() > 2 * outside.nanmean()
