"""Mahalanobis scorers agree with closed forms and scikit-learn's LedoitWolf; smoothing with scipy."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.covariance import LedoitWolf

from pitscope.scoring import (
    GaussianScorer,
    PatchGaussianScorer,
    StandardisedSumScorer,
    _Moments,
    gaussian_smooth,
    out_of_fold_block_distances,
    out_of_fold_scores,
    remove_background,
    score_factor,
    sharpen_to_local_peak,
    shown_map,
)


def _correlated(n: int, d: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + offset


def test_identity_covariance_gives_euclidean_distance():
    # +-e_1, +-e_2: mean 0, covariance I / 2; a ridge of 0.5 makes it exactly I.
    x = torch.cat([torch.eye(2), -torch.eye(2)]).double()
    scorer = GaussianScorer(shrinkage="ridge", ridge=0.5).double().fit(x)
    torch.testing.assert_close(scorer.precision_, torch.eye(2, dtype=torch.float64))
    y = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(scorer.score(y), torch.tensor([5.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(scorer.score(y, squared=True), torch.tensor([25.0, 0.0], dtype=torch.float64))


def test_diagonal_covariance_with_ridge_is_analytic():
    a, b, r = 2.0, 4.0, 0.01
    x = torch.tensor([[a, 0], [-a, 0], [0, b], [0, -b]], dtype=torch.float64) + torch.tensor(
        [5.0, -1.0], dtype=torch.float64
    )
    scorer = GaussianScorer(shrinkage="ridge", ridge=r).double().fit(x)
    torch.testing.assert_close(scorer.location_, torch.tensor([5.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(
        scorer.covariance_, torch.diag(torch.tensor([a * a / 2 + r, b * b / 2 + r], dtype=torch.float64))
    )
    y = torch.tensor([[6.0, 1.0]], dtype=torch.float64)
    expected = np.sqrt(1.0 / (a * a / 2 + r) + 4.0 / (b * b / 2 + r))
    assert scorer.score(y).item() == pytest.approx(expected, rel=1e-12)
    assert scorer.shrinkage_.item() == r


@pytest.mark.parametrize("n,d,offset", [(40, 6, 0.0), (20, 30, 100.0), (200, 1, 3.0)])
def test_ledoit_wolf_matches_sklearn(n, d, offset):
    x = _correlated(n, d, seed=n + d, offset=offset)
    y = _correlated(7, d, seed=99, offset=offset)
    reference = LedoitWolf(assume_centered=False).fit(x.numpy())
    scorer = GaussianScorer().double().fit(x)
    np.testing.assert_allclose(scorer.location_.numpy(), reference.location_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        scorer.covariance_.numpy(), reference.covariance_, rtol=1e-6, atol=1e-9 * np.abs(reference.covariance_).max()
    )
    assert scorer.shrinkage_.item() == pytest.approx(reference.shrinkage_, rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(scorer.score(y).numpy(), np.sqrt(reference.mahalanobis(y.numpy())), rtol=1e-6)


def test_fit_returns_self_and_unfitted_scoring_fails():
    scorer = GaussianScorer()
    assert not scorer.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        scorer.score(torch.zeros(2, 3))
    assert scorer.fit(torch.randn(10, 3)) is scorer
    assert scorer.is_fitted


def test_unknown_shrinkage_lists_choices():
    with pytest.raises(ValueError, match="ledoit_wolf, ridge"):
        GaussianScorer(shrinkage="oas")


def test_state_dict_round_trip_into_fresh_instance():
    x = _correlated(50, 8, seed=3).float()
    fitted = GaussianScorer().fit(x)
    fresh = GaussianScorer()
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.is_fitted
    torch.testing.assert_close(fresh.score(x), fitted.score(x), rtol=0, atol=0)
    assert set(fitted.state_dict()) == {"location_", "covariance_", "precision_", "shrinkage_"}


def test_to_dtype_moves_buffers():
    scorer = GaussianScorer().fit(_correlated(30, 4, seed=4).float())
    assert scorer.precision_.dtype == torch.float32
    scorer = scorer.to(torch.float64)
    assert all(buf.dtype == torch.float64 for buf in scorer.buffers())
    assert scorer.score(torch.zeros(1, 4)).dtype == torch.float64


def _feature_maps(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    # correlate channels and give every position its own mean
    return (
        torch.einsum("nchw,cd->ndhw", base, torch.randn(c, c, generator=g, dtype=torch.float64))
        + torch.randn(c, h, w, generator=g, dtype=torch.float64) * 5
    )


def test_patch_scorer_matches_sklearn_per_position():
    train, test = _feature_maps(30, 5, 3, 4, seed=5), _feature_maps(4, 5, 3, 4, seed=6)
    scorer = PatchGaussianScorer(chunk=5).double().fit(train)  # chunk does not divide 12 positions
    maps = scorer.score_map(test)
    assert maps.shape == (4, 3, 4)
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        reference = LedoitWolf().fit(train[:, :, i, j].numpy())
        assert scorer.shrinkage_[i * 4 + j].item() == pytest.approx(reference.shrinkage_, rel=1e-6)
        np.testing.assert_allclose(
            maps[:, i, j].numpy(), np.sqrt(reference.mahalanobis(test[:, :, i, j].numpy())), rtol=1e-6
        )


def test_patch_scorer_equals_gaussian_scorer_and_streams():
    train, test = _feature_maps(24, 6, 2, 3, seed=7), _feature_maps(3, 6, 2, 3, seed=8)
    whole = PatchGaussianScorer().double().fit(train)
    streamed = PatchGaussianScorer().double().fit(iter(train.split(5)))
    torch.testing.assert_close(streamed.precision_, whole.precision_, rtol=1e-9, atol=1e-12)
    single = GaussianScorer().double().fit(train[:, :, 1, 2])
    torch.testing.assert_close(whole.score_map(test)[:, 1, 2], single.score(test[:, :, 1, 2]), rtol=1e-9, atol=0)


def test_patch_channel_subset_is_seeded_and_round_trips():
    train = _feature_maps(20, 10, 2, 2, seed=9).float()
    a = PatchGaussianScorer(n_channels=4, seed=1).fit(train)
    b = PatchGaussianScorer(n_channels=4, seed=1).fit(train)
    assert a.channel_index_.tolist() == b.channel_index_.tolist() and len(a.channel_index_) == 4
    assert a.precision_.shape == (4, 4, 4) and a.location_.shape == (4, 4)
    fresh = PatchGaussianScorer(n_channels=4, seed=1)
    fresh.load_state_dict(a.state_dict())
    torch.testing.assert_close(fresh.score_map(train), a.score_map(train), rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected"):
        fresh.score_map(train[:, :, :1])


def test_patch_scorer_refuses_maps_of_another_size_everywhere():
    maps = _feature_maps(6, 3, 2, 2, seed=5)
    scorer = PatchGaussianScorer().double()
    scorer.partial_fit(maps[:3])
    other = maps[:, :, :1]
    with pytest.raises(ValueError, match=r"feature maps are \(1, 2\), expected \(2, 2\)"):
        scorer.partial_fit(other)
    scorer.finalize()
    for call in (scorer.score_map, scorer.row_distances, scorer.moments):
        with pytest.raises(ValueError, match=r"feature maps are \(1, 2\), expected \(2, 2\)"):
            call(other)


def test_neighbourhood_keeps_the_nearest_gaussian_within_the_square():
    train, test = _feature_maps(30, 4, 4, 5, seed=21), _feature_maps(3, 4, 4, 5, seed=22)
    own = PatchGaussianScorer(chunk=7).double().fit(train)  # chunk does not divide 20 positions
    near = PatchGaussianScorer(chunk=7, radius=1).double().fit(train)
    got = near.score_map(test)
    for i, j in [(0, 0), (1, 2), (3, 4), (2, 0)]:
        distances = []
        for a in range(max(0, i - 1), min(4, i + 2)):
            for b in range(max(0, j - 1), min(5, j + 2)):
                reference = LedoitWolf().fit(train[:, :, a, b].numpy())
                distances.append(np.sqrt(reference.mahalanobis(test[:, :, i, j].numpy())))
        np.testing.assert_allclose(got[:, i, j].numpy(), np.min(distances, axis=0), rtol=1e-6)
    assert bool((got <= own.score_map(test) + 1e-12).all())


def test_channel_groups_add_their_distances_under_the_nearest_position():
    train, test = _feature_maps(40, 12, 3, 4, seed=31), _feature_maps(3, 12, 3, 4, seed=32)
    grouped = PatchGaussianScorer(n_channels=8, seed=3, groups=2, chunk=5, radius=1).double().fit(train)
    index = grouped.channel_index_.reshape(2, 4)
    assert len(set(index.flatten().tolist())) == 8 and all(row.tolist() == sorted(row.tolist()) for row in index)
    assert grouped.precision_.shape == (3 * 4 * 2, 4, 4)
    got = grouped.score_map(test)
    references = [[LedoitWolf().fit(train[:, row, a, b].numpy()) for a in range(3) for b in range(4)] for row in index]
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        distances = []  # each neighbour's Gaussians, the two groups' squared distances added
        for a in range(max(0, i - 1), min(3, i + 2)):
            for b in range(max(0, j - 1), min(4, j + 2)):
                distances.append(
                    sum(refs[a * 4 + b].mahalanobis(test[:, row, i, j].numpy()) for refs, row in zip(references, index))
                )
        np.testing.assert_allclose(got[:, i, j].numpy(), np.sqrt(np.min(distances, axis=0)), rtol=1e-6)
    fresh = PatchGaussianScorer(n_channels=8, seed=3, groups=2, radius=1).double()
    fresh.load_state_dict(grouped.state_dict())
    torch.testing.assert_close(fresh.score_map(test), got, rtol=0, atol=0)
    one = PatchGaussianScorer(n_channels=8, seed=3).double().fit(train)
    assert (
        one.channel_index_.tolist()
        == torch.randperm(12, generator=torch.Generator().manual_seed(3))[:8].sort().values.tolist()
    )
    with pytest.raises(ValueError, match="divide"):
        PatchGaussianScorer(n_channels=9, groups=2)
    with pytest.raises(ValueError, match="divide"):
        PatchGaussianScorer(groups=5).fit(train)  # all 12 channels into 5 groups


def test_a_traced_map_is_one_product_and_scores_as_the_blocks_do():
    """Traced (as an export traces it), the map is computed over every position at once, with
    one matrix product in the graph, and gives what the blocks of `chunk` positions give."""
    train, test = _feature_maps(30, 4, 4, 5, seed=23), _feature_maps(3, 4, 4, 5, seed=24)
    for radius, groups in [(0, 1), (1, 1), (1, 2)]:
        scorer = PatchGaussianScorer(chunk=7, radius=radius, groups=groups).double().fit(train).eval()
        traced = torch.jit.trace(scorer, (test,), check_trace=False)
        products = [node for node in traced.inlined_graph.nodes() if node.kind() == "aten::bmm"]
        assert len(products) == 1, (radius, groups)
        torch.testing.assert_close(traced(test), scorer.score_map(test))


def test_neighbourhood_makes_a_shifted_edge_normal_but_not_a_new_spot():
    """Photos whose bright edge falls on column 3 or 4: scored against each position's own
    Gaussian, an edge on column 5 is far off; against the Gaussians one column away it is normal,
    while a bright spot where no photo had one stays far off either way."""
    g = torch.Generator().manual_seed(3)
    train = 0.05 * torch.randn(40, 2, 6, 8, generator=g, dtype=torch.float64)
    train[:20, :, :, 3] += 1.0
    train[20:, :, :, 4] += 1.0
    shifted = 0.05 * torch.randn(1, 2, 6, 8, generator=g, dtype=torch.float64)
    shifted[:, :, :, 5] += 1.0
    spot = 0.05 * torch.randn(1, 2, 6, 8, generator=g, dtype=torch.float64)
    spot[:, :, :, 3] += 1.0
    spot[:, :, 2, 0] += 1.0
    own = PatchGaussianScorer(n_channels=None).double().fit(train)
    near = PatchGaussianScorer(n_channels=None, radius=1).double().fit(train)
    typical = float(near.score_map(train[:5]).amax())
    assert float(own.score_map(shifted)[0, :, 5].amin()) > 5 * typical
    assert float(near.score_map(shifted).amax()) < 2 * typical
    assert float(near.score_map(spot)[0, 2, 0]) > 5 * typical
    with pytest.raises(ValueError, match="radius"):
        PatchGaussianScorer(radius=-1)


def test_patch_scorer_unfitted_fails():
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchGaussianScorer().score_map(torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("sigma,shape", [(1.0, (2, 9, 11)), (4.0, (1, 20, 16)), (2.5, (1, 5, 40))])
def test_gaussian_smooth_matches_scipy(sigma, shape):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma, mode="reflect", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_smooth(maps, sigma).numpy(), expected, rtol=0, atol=1e-12)


def test_constant_features_fall_back_to_pseudo_inverse():
    scorer = GaussianScorer().fit(torch.ones(5, 3))  # zero covariance, singular even when shrunk
    torch.testing.assert_close(scorer.precision_, torch.zeros(3, 3))
    torch.testing.assert_close(scorer.score(torch.zeros(2, 3)), torch.zeros(2))


def test_out_of_fold_scores_match_sklearn_fitted_without_the_fold():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5))
    folds = [
        [0, 3, 6, 9, 12, 15, 18, 21, 24, 27],
        [1, 4, 7, 10, 13, 16, 19, 22, 25, 28],
        [2, 5, 8, 11, 14, 17, 20, 23, 26, 29],
    ]
    scores = out_of_fold_scores(torch.from_numpy(x), folds).numpy()
    for fold in folds:
        rest = np.setdiff1d(np.arange(30), fold)
        lw = LedoitWolf().fit(x[rest])
        np.testing.assert_allclose(scores[fold], np.sqrt(lw.mahalanobis(x[fold])), rtol=1e-4)


def test_out_of_fold_scores_see_an_outlier_that_an_in_sample_fit_absorbs():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 3))
    x[7] = [8.0, -8.0, 8.0]
    features = torch.from_numpy(x)
    folds = [list(range(k, 20, 4)) for k in range(4)]
    out = out_of_fold_scores(features, folds)
    inside = GaussianScorer().fit(features).score(features).double()
    assert out[7] > 1.5 * inside[7]
    assert int(out.argmax()) == 7


def test_out_of_fold_scores_reject_bad_folds():
    features = torch.randn(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly once"):
        out_of_fold_scores(features, [[0, 1, 2], [3, 4]])
    with pytest.raises(ValueError, match="exactly once"):
        out_of_fold_scores(features, [[0, 1, 2], [2, 3, 4, 5]])
    with pytest.raises(ValueError, match="fewer than 2"):
        out_of_fold_scores(features, [[0, 1, 2, 3, 4], [5]])


def test_standardised_sum_is_each_blocks_own_gaussian_centred_and_scaled():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(40, 3)) @ rng.normal(size=(3, 3)), rng.normal(size=(40, 4)) * 3], axis=1)
    fit, held, new = torch.from_numpy(x[:25]), torch.from_numpy(x[25:35]), torch.from_numpy(x[35:])
    scorer = StandardisedSumScorer([3, 4]).double().fit(fit)
    assert not scorer.is_fitted  # not until its centres and spreads are set
    own = [np.sqrt(LedoitWolf().fit(x[:25, cols]).mahalanobis(x[:, cols])) for cols in (slice(0, 3), slice(3, 7))]
    np.testing.assert_allclose(scorer.block_distances(torch.from_numpy(x)).numpy(), np.stack(own, 1), rtol=1e-6)
    scorer.set_standardisation(scorer.block_distances(held))
    centre = [d[25:35].mean() for d in own]
    spread = [d[25:35].std(ddof=1) for d in own]
    expected = sum((d[35:] - c) / s for d, c, s in zip(own, centre, spread))
    np.testing.assert_allclose(scorer.score(new).numpy(), expected, rtol=1e-6)
    assert scorer.is_fitted
    # a fitted scorer restores from its state dict
    copy = StandardisedSumScorer([3, 4]).double()
    copy.load_state_dict(scorer.state_dict())
    torch.testing.assert_close(copy.score(new), scorer.score(new))
    assert copy.is_fitted
    older = {k: v for k, v in scorer.state_dict().items() if k != "standardised_"}  # saved before the flag
    copy = StandardisedSumScorer([3, 4]).double()
    copy.load_state_dict(older)
    assert copy.is_fitted
    assert not scorer.fit(fit).is_fitted and float(scorer.spread_.sum()) == 2  # a new fit starts over


def test_standardised_sum_out_of_fold_is_each_blocks_out_of_fold_distance():
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(12, 5)))
    folds = [list(range(k, 12, 3)) for k in range(3)]
    scorer = StandardisedSumScorer([2, 3])
    blocks = out_of_fold_block_distances(scorer, x, folds)
    torch.testing.assert_close(blocks[:, 0], out_of_fold_scores(x[:, :2], folds))
    torch.testing.assert_close(blocks[:, 1], out_of_fold_scores(x[:, 2:], folds))


def test_standardised_sum_refuses_features_of_another_width():
    scorer = StandardisedSumScorer([2, 3])
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        scorer.fit(torch.randn(6, 4))
    with pytest.raises(ValueError, match="positive widths"):
        StandardisedSumScorer([2, 0])


def test_patch_scorer_refitted_without_a_part_matches_sklearn_fitted_without_it():
    # the sums kept by the fit plus those of more samples, less those of a part, fit the rest
    first, more = _feature_maps(14, 5, 2, 3, seed=21), _feature_maps(9, 5, 2, 3, seed=22)
    scorer = PatchGaussianScorer(n_channels=4, seed=3, chunk=4).double()
    for batch in first.split(5):
        scorer.partial_fit(batch)
    scorer.finalize(keep_moments=True)
    total = scorer._moments.combined(scorer.moments(more[:4], scorer.moments(more[4:])))
    part = scorer.moments(torch.cat([first[:3], more[6:]]))  # 3 of the fitted samples, 3 of the others
    refit = scorer.refitted(total.combined(part, -1))
    rest = torch.cat([first[3:], more[:6]])  # the 17 samples left
    channels = scorer.channel_index_
    assert refit.channel_index_.tolist() == channels.tolist() and scorer.location_.shape == refit.location_.shape
    test = _feature_maps(3, 5, 2, 3, seed=23)
    maps = refit.score_map(test)
    for i, j in [(0, 0), (1, 1), (1, 2)]:
        reference = LedoitWolf().fit(rest[:, channels, i, j].numpy())
        assert refit.shrinkage_[i * 3 + j].item() == pytest.approx(reference.shrinkage_, rel=1e-6)
        np.testing.assert_allclose(
            maps[:, i, j].numpy(), np.sqrt(reference.mahalanobis(test[:, channels, i, j].numpy())), rtol=1e-6
        )
    # the fitted scorer is left as it was: fitted on the first 14
    direct = PatchGaussianScorer(n_channels=4, seed=3).double().fit(first)
    torch.testing.assert_close(scorer.score_map(test), direct.score_map(test), rtol=1e-9, atol=0)
    scorer.release_moments()
    assert scorer._moments is None


def test_patch_scorer_refitted_less_masked_samples_matches_sklearn_on_each_positions_own_samples():
    # each position (and group) leaves out its own samples: the refit there is sklearn's fit on the rest
    maps = _feature_maps(16, 6, 2, 2, seed=31)
    scorer = PatchGaussianScorer(seed=4, chunk=3, groups=2).double()
    scorer.partial_fit(maps[:7]).partial_fit(maps[7:]).finalize(keep_moments=True)
    rows = 2 * 2 * 2  # positions x groups
    generator = torch.Generator().manual_seed(5)
    mask = torch.rand(rows, 16, generator=generator) < 0.3  # the samples left out, row by row
    mask[0] = False  # a row that leaves out nothing
    part = scorer.moments(maps[:9], None, mask[:, :9])
    part = scorer.moments(maps[9:], part, mask[:, 9:])
    assert part.counts is not None and part.counts.tolist() == mask.sum(1).double().tolist()
    refit = scorer.refitted(scorer._moments.combined(part, -1))
    scorer.release_moments()
    channels = scorer.channel_index_.reshape(2, -1)  # group after group
    for row in range(rows):
        position, group = divmod(row, 2)
        i, j = divmod(position, 2)
        kept = maps[~mask[row]][:, channels[group], i, j].numpy()
        reference = LedoitWolf().fit(kept)
        np.testing.assert_allclose(refit.location_[row].numpy(), reference.location_, rtol=1e-9)
        np.testing.assert_allclose(refit.precision_[row].numpy(), reference.precision_, rtol=1e-6)
        assert refit.shrinkage_[row].item() == pytest.approx(reference.shrinkage_, rel=1e-6)
    with pytest.raises(ValueError, match="mask"):
        scorer_moments = PatchGaussianScorer().double().fit(maps)
        scorer_moments.moments(maps, None, mask[:, :3])


def test_row_distances_are_each_rows_own_squared_distance():
    maps = _feature_maps(12, 4, 2, 3, seed=32)
    scorer = PatchGaussianScorer(chunk=2, groups=2, radius=1).double().fit(maps)
    test = _feature_maps(3, 4, 2, 3, seed=33)
    rows = scorer.row_distances(test)  # (positions x groups, 3)
    assert rows.shape == (2 * 3 * 2, 3)
    # a position's groups add up to the map's squared distance without the neighbourhood
    own = PatchGaussianScorer(chunk=2, groups=2, radius=0).double().fit(maps)
    summed = rows.reshape(6, 2, 3).sum(1).T.reshape(3, 2, 3)
    torch.testing.assert_close(summed, own.score_map(test, squared=True), rtol=1e-9, atol=1e-12)


def test_moments_combine_only_about_one_shift_and_never_below_zero():
    maps = _feature_maps(6, 3, 2, 2, seed=24)
    scorer = PatchGaussianScorer().double()
    scorer.partial_fit(maps[:3])
    scorer.finalize(keep_moments=True)
    kept = scorer._moments
    with pytest.raises(ValueError, match="same shift"):
        kept.combined(PatchGaussianScorer().double().fit(maps).moments(maps))  # about another fit's means
    with pytest.raises(ValueError, match="cannot take 6 samples from 3"):
        kept.combined(scorer.moments(maps), -1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        scorer.refitted(kept.combined(scorer.moments(maps[:2]), -1))
    with pytest.raises(ValueError, match="expected"):
        scorer.moments(maps[:, :, :1])
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchGaussianScorer().moments(maps)


def test_pixel_threshold_rules_by_hand():
    from pitscope.scoring import pixel_threshold_of

    maps = np.zeros((4, 2, 2))
    maps[:, 0, 0] = [1.0, 2.0, 3.0, 10.0]  # each map's maximum
    assert pixel_threshold_of(maps, 0.5, "image_max") == 2.5
    assert pixel_threshold_of(maps, 1.0, "image_max") == 10.0
    assert pixel_threshold_of(maps, 0.75, "pixels") == np.quantile(maps, 0.75)
    with pytest.raises(ValueError, match="image_max"):
        pixel_threshold_of(maps, 0.5, "median")


def test_symmetric_packing_round_trips_exactly_and_halves_the_values():
    from pitscope.scoring import pack_symmetric, unpack_symmetric

    a = torch.randn(5, 7, 7, dtype=torch.float64)
    sym = (a + a.transpose(-1, -2)) / 2
    packed = pack_symmetric(sym)
    assert packed.shape == (5, 7 * 8 // 2)
    assert torch.equal(unpack_symmetric(packed, 7), sym)
    # the packed values are the upper triangle, row by row: for a 2 x 2 matrix [[a, b], [b, c]] -> [a, b, c]
    assert pack_symmetric(torch.tensor([[1.0, 2.0], [2.0, 3.0]])).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="do not fill"):
        unpack_symmetric(packed, 6)


def test_sums_of_a_zero_covariance_with_a_rounding_error_below_zero_shrink_by_nothing():
    # a position whose remaining samples all equal the shift: S2 = 0, while the fourth-moment
    # sum, taken apart from others, is off 0 by rounding
    moments = _Moments(chunk=4, shift=torch.zeros(2, 3, dtype=torch.float64))
    assert moments.counts is not None
    moments.counts.fill_(7)
    moments.s2[1] = torch.eye(3, dtype=torch.float64) * 7  # position 1: unit covariance
    moments.saa[:] = torch.tensor([-1e-12, 7 * 15.0], dtype=torch.float64)
    mean, cov, coef = moments.gaussian(slice(0, 2), "ledoit_wolf", 0.0)
    assert coef.tolist() == [0.0, 0.0] and torch.isfinite(cov).all()
    torch.testing.assert_close(cov[0], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(cov[1], torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("normalisation", "expected"),
    [
        ("none", [1.0, 1.0, 1.0, 1.0]),
        ("image_mean", [1.0, 1.0, 1.0, 1.0]),
        ("image_mean_score", [0.0, 0.5, 1.0, 3.0]),
        ("image_score", [0.0, 0.5, 1.0, 3.0]),
        ("image_score_capped", [0.0, 0.5, 1.0, 1.0]),
    ],
)
def test_score_factor_of_each_map_normalisation(normalisation, expected):
    scores = torch.tensor([0.0, 2.0, 4.0, 12.0], dtype=torch.float64)
    np.testing.assert_allclose(score_factor(normalisation, scores, 4.0).numpy(), expected)


def test_sharpening_keeps_each_peak_and_lowers_its_flanks_by_their_share_of_it():
    maps = torch.zeros(1, 1, 12)
    maps[0, 0, 2:5] = torch.tensor([2.0, 4.0, 2.0])  # a blob: flanks at half its peak
    maps[0, 0, 9] = 2.0  # a lone peak of its own, 5 px from the blob's
    for power, flank in ((1.0, 1.0), (2.0, 0.5)):
        out = sharpen_to_local_peak(maps, 5, power)
        assert out[0, 0, 3] == 4.0 and out[0, 0, 9] == 2.0  # every peak stays
        assert out[0, 0, 2] == out[0, 0, 4] == pytest.approx(flank)  # 2 x (2 / 4) ** power
        assert out[0, 0, 7] == 0.0
    assert torch.equal(sharpen_to_local_peak(maps, 0, 2.0), maps)
    wide = sharpen_to_local_peak(maps, 15, 1.0)  # the lone peak now sees the blob's: it falls too
    assert wide[0, 0, 9] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="odd"):
        sharpen_to_local_peak(maps, 4)


@pytest.mark.parametrize("window", [1, 3, 9, 61])
def test_sharpening_peaks_are_the_maxima_of_each_square_window(window):
    """The two 1-D passes give the maximum of each window x window square, as scipy's maximum_filter
    (the border: only the pixels inside the map count)."""
    from scipy.ndimage import maximum_filter

    maps = torch.rand(2, 37, 70, generator=torch.Generator().manual_seed(window)) + 0.1
    peak = np.stack([maximum_filter(m, size=window, mode="constant", cval=-np.inf) for m in maps.numpy()])
    expected = maps.numpy() * (maps.numpy() / peak)
    np.testing.assert_allclose(sharpen_to_local_peak(maps, window, 1.0).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("window", [1, 3, 9, 61])
def test_background_removal_is_the_white_top_hat(window):
    """The map less its grey opening over a window x window square, as scipy's white_tophat (the
    border: only the pixels inside the map count, which edge replication leaves unchanged)."""
    from scipy.ndimage import white_tophat

    maps = torch.rand(2, 37, 70, generator=torch.Generator().manual_seed(window), dtype=torch.float64)
    expected = np.stack([white_tophat(m, size=window, mode="nearest") for m in maps.numpy()])
    np.testing.assert_allclose(remove_background(maps, window).numpy(), expected, atol=1e-12)


def test_background_removal_drops_broad_stretches_and_keeps_narrow_blobs():
    maps = torch.full((1, 21, 40), 1.0)
    maps[0, :, 20:] = 3.0  # a raised stretch 20 px wide, all rows
    maps[0, 10, 5] = 5.0  # a blob of one pixel on the level part
    out = remove_background(maps, 7)
    assert out[0, 10, 5] == pytest.approx(4.0)  # its height above its surroundings
    assert out[0, :, 20:].abs().max() == 0.0 and out[0, 0, :5].abs().max() == 0.0
    assert torch.equal(remove_background(maps, 0), maps)
    with pytest.raises(ValueError, match="odd"):
        remove_background(maps, 6)
    # the map shown: background first, then the narrowing; either step off with 0
    assert torch.equal(shown_map(maps, 0, 0, 2.0), maps)
    torch.testing.assert_close(shown_map(maps, 7, 5, 1.0), sharpen_to_local_peak(out, 5, 1.0))
