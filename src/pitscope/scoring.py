"""Mahalanobis scoring against Gaussians fitted on defect-free features (SPEC section 5).

`GaussianScorer` scores whole images from pooled embeddings (Rippel et al. 2021);
`PatchGaussianScorer` scores every spatial position of a feature map with its own Gaussian
(PaDiM, SPEC 5a); `gaussian_smooth` smooths the resulting maps; `out_of_fold_scores` gives every
defect-free image a score from a Gaussian fitted without it, to calibrate a threshold on. Both scorers follow the
scikit-learn estimator contract (hyper-parameters in `__init__`, `fit` returns `self`, learned
state ends in `_`) and hold that state as torch buffers, so it follows `.to(device)` and lands
in `state_dict`.

Both estimate the covariance from the same sufficient statistics, accumulated in float64:
`_Moments` sums, per position, x, x x^T, ||x||^2 x and ||x||^4 of the data shifted by the
first batch's mean. These determine the mean, the maximum-likelihood covariance (divided by
N, as sklearn's `empirical_covariance`) and the Ledoit-Wolf shrinkage exactly, in one
streaming pass (the algebra is in `_Moments.gaussian`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pitscope.config import SCORE_FACTORS, ScoreConfig

SHRINKAGES = ("ledoit_wolf", "ridge")


class _Moments:
    """Float64 running sums over samples, for P independent positions of D features each.

    With z = x - s (s: the shift, the first batch's mean per position) it keeps the counts
    (P,), S1 = sum z (P, D), S2 = sum z z^T (P, D, D), Sa = sum ||z||^2 z (P, D) and
    Saa = sum ||z||^4 (P,). Shifting keeps the sums near-centred, so subtracting the mean at
    the end loses no precision when features have a large mean. A position's count is the
    number of samples summed there: the same at every position unless an update left some
    samples out of some positions (`update`'s mask).
    """

    def __init__(self, chunk: int, shift: Tensor | None = None):
        self.chunk = chunk
        self.shift: Tensor | None = None
        self.counts: Tensor | None = None
        if shift is not None:  # sums about a given shift, so they add to others about it
            self._start(shift.to(torch.float64))

    @property
    def n(self) -> int:
        """The fewest samples summed at any position (0 before the first)."""
        return 0 if self.counts is None else int(self.counts.min())

    def _start(self, shift: Tensor) -> None:
        p, d = shift.shape
        self.shift = shift
        self.counts = shift.new_zeros(p)
        self.s1 = shift.new_zeros(p, d)
        self.s2 = shift.new_zeros(p, d, d)
        self.sa = shift.new_zeros(p, d)
        self.saa = shift.new_zeros(p)

    def empty(self) -> _Moments:
        """No samples yet, about this one's shift (so that the two combine)."""
        return _Moments(self.chunk, self.shift)

    def combined(self, other: _Moments, sign: int = 1) -> _Moments:
        """The sums over both sample sets (sign 1), or over this one less `other` (sign -1, for
        `other` a part of this one). Both must be taken about the same shift."""
        if self.shift is None or other.shift is None or not torch.equal(self.shift, other.shift):
            raise ValueError("moments combine only when taken about the same shift")
        out = _Moments(self.chunk)
        out.shift = self.shift
        for name in ("counts", "s1", "s2", "sa", "saa"):
            setattr(out, name, torch.add(getattr(self, name), getattr(other, name), alpha=sign))
        assert out.counts is not None and self.counts is not None and other.counts is not None
        if (out.counts < 0).any():
            raise ValueError(f"cannot take {int(other.counts.max())} samples from {self.n}")
        return out

    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Add samples x: (P, B, D); with mask (P, B) of booleans, only sample b at position p
        where mask[p, b] is true."""
        # contiguous: feature maps arrive as a (P, B, D) view of (B, D, P), and the strided
        # products are several times slower
        x = x.to(torch.float64).contiguous()
        p, _, d = x.shape
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"expected a mask of {tuple(x.shape[:2])} positions x samples, got {tuple(mask.shape)}")
        shift = self.shift
        if shift is None:
            shift = x.mean(1)  # (P, D)
            self._start(shift)
        elif (p, d) != tuple(shift.shape):
            raise ValueError(f"expected {tuple(shift.shape)} positions x features, got {(p, d)}")
        assert self.counts is not None, "_start sets the counts with the shift"
        for start in range(0, p, self.chunk):
            sl = slice(start, start + self.chunk)
            z = x[sl] - shift[sl, None]  # (p, B, D)
            if mask is not None:  # a left-out sample adds zeros to every sum
                z = z * mask[sl, :, None].to(z)
            a = (z**2).sum(-1)  # (p, B)
            self.s1[sl] += z.sum(1)
            self.s2[sl].baddbmm_(z.transpose(1, 2), z)
            self.sa[sl] += torch.einsum("pb,pbd->pd", a, z)
            self.saa[sl] += (a**2).sum(1)
        self.counts += x.shape[1] if mask is None else mask.to(self.counts).sum(1)

    def gaussian(self, sl: slice, shrinkage: str, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
        """Mean (p, D), shrunk covariance (p, D, D) and shrinkage (p,) of positions `sl`, float64.

        ledoit_wolf: sklearn's `ledoit_wolf_shrinkage` on the centred data X (rows x_i),
            S = X^T X / n, mu = tr(S) / D, delta = ||S - mu I||_F^2 / D,
            beta = min(delta, (sum_i ||x_i||^4 / n - ||S||_F^2) / (D n)),
            shrinkage = beta / delta (0 when beta = 0 or D = 1),
            covariance = (1 - shrinkage) S + shrinkage mu I.
            With m = S1 / n, x_i = z_i - m and c = ||m||^2, expanding ||x_i||^4 gives
            sum_i ||x_i||^4 = Saa - 4 m.Sa + 4 m^T S2 m + 2 c tr(S2) - 3 n c^2.
        ridge: S + ridge I, and shrinkage = ridge.
        """
        assert self.shift is not None and self.counts is not None, "the sums (s1, ...) exist only once a shift is set"
        shift, n, d = self.shift, self.counts[sl], self.s1.shape[-1]
        m = self.s1[sl] / n[:, None]  # (p, D)
        s2 = self.s2[sl]
        cov = s2 / n[:, None, None] - m[:, :, None] * m[:, None, :]  # (p, D, D)
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        if shrinkage == "ridge":
            coef = torch.full((cov.shape[0],), float(ridge), dtype=cov.dtype, device=cov.device)
            return shift[sl] + m, cov + ridge * eye, coef
        c = (m**2).sum(-1)  # (p,)
        s2_trace = torch.diagonal(s2, dim1=-2, dim2=-1).sum(-1)
        fourth = (
            self.saa[sl]
            - 4 * (m * self.sa[sl]).sum(-1)
            + 4 * torch.einsum("pi,pij,pj->p", m, s2, m)
            + 2 * c * s2_trace
            - 3 * n * c**2
        )
        trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
        mu = trace / d
        frob = (cov**2).sum((-2, -1))
        beta = (fourth / n - frob) / (d * n)
        delta = (frob - 2 * mu * trace + d * mu**2) / d
        # beta >= 0 in exact arithmetic (sum ||x_i||^4 / n - ||S||_F^2 = sum ||x_i x_i^T - S||_F^2 / n),
        # but sums taken apart (`combined` with sign -1) can leave a rounding error below 0 where
        # the covariance is 0; the cap at delta is Ledoit-Wolf's own
        beta = torch.minimum(beta.clamp(min=0), delta)
        coef = torch.where(beta <= 0, torch.zeros_like(beta), beta / delta)
        if d == 1:
            coef = torch.zeros_like(coef)
        cov = (1 - coef)[:, None, None] * cov + (coef * mu)[:, None, None] * eye
        return shift[sl] + m, cov, coef


def _precision(cov: Tensor) -> Tensor:
    """Inverse of covariances (..., D, D); the pseudo-inverse (sklearn's `pinvh`) where singular.

    A shrunk covariance is positive definite except in degenerate cases (e.g. every kept
    channel constant at a position), and a batched LU inverse is several times faster than
    the eigendecomposition behind `pinv`, so `pinv` is only the fallback.
    """
    inverse, info = torch.linalg.inv_ex(cov)
    singular = info != 0
    if singular.any():
        inverse[singular] = torch.linalg.pinv(cov[singular], hermitian=True)
    return (inverse + inverse.transpose(-1, -2)) / 2


def pack_symmetric(matrices: Tensor) -> Tensor:
    """(..., D, D) symmetric -> (..., D * (D + 1) / 2): the upper triangle, row by row. Half the
    bytes of a precision stack on disk; `unpack_symmetric` gives the matrices back exactly."""
    d = matrices.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=matrices.device)
    return matrices[..., rows, cols].contiguous()


def unpack_symmetric(packed: Tensor, d: int) -> Tensor:
    """`pack_symmetric`'s inverse: (..., D * (D + 1) / 2) -> (..., D, D)."""
    if packed.shape[-1] != d * (d + 1) // 2:
        raise ValueError(f"{packed.shape[-1]} packed values do not fill a {d} x {d} symmetric matrix")
    rows, cols = torch.triu_indices(d, d, device=packed.device)
    out = packed.new_empty(*packed.shape[:-1], d, d)
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


def _check_shrinkage(shrinkage: str) -> None:
    if shrinkage not in SHRINKAGES:
        raise ValueError(f"unknown shrinkage {shrinkage!r}; valid: {', '.join(SHRINKAGES)}")


class _FittedBuffers(nn.Module):
    """Registers the learned state as empty buffers and resizes them when a state dict loads.

    So `Scorer(**hyper_parameters).load_state_dict(fitted.state_dict())` restores a fitted
    scorer, with the buffers keeping the receiving module's dtype and device.
    """

    _state: tuple[str, ...] = ()
    location_: Tensor  # every scorer's state has it; `is_fitted` reads it

    def _buffer(self, name: str) -> Tensor:
        """The buffer `name` of `_state` (`_buffers` is typed to hold None too)."""
        buffer = self._buffers[name]
        assert buffer is not None, "_register_empty registers every name of _state with a tensor"
        return buffer

    def _register_empty(self, dtypes: dict[str, torch.dtype]) -> None:
        for name in self._state:
            self.register_buffer(name, torch.empty(0, dtype=dtypes.get(name, torch.get_default_dtype())))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._state:
            key = prefix + name
            if key in state_dict:
                old = self._buffer(name)
                self._buffers[name] = torch.empty(state_dict[key].shape, dtype=old.dtype, device=old.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set(self, name: str, value: Tensor) -> None:
        """Store a fitted value in the buffer's dtype and device, contiguous (a transposed layout
        would make a loaded copy round differently in matmuls)."""
        old = self._buffer(name)
        self._buffers[name] = value.to(dtype=old.dtype, device=old.device).contiguous()

    @property
    def is_fitted(self) -> bool:
        return self.location_.numel() > 0

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")


class GaussianScorer(_FittedBuffers):
    """One Gaussian over feature vectors; scores are Mahalanobis distances to it.

    shrinkage: "ledoit_wolf" (sklearn's `LedoitWolf(assume_centered=False)`) or "ridge"
        (the maximum-likelihood covariance plus `ridge` times the identity).
    ridge: the diagonal loading of the "ridge" option.

    Fitted state (buffers): location_ (D,) the mean; covariance_ (D, D) the shrunk covariance;
    precision_ (D, D) its inverse (pseudo-inverse if singular); shrinkage_ () the Ledoit-Wolf
    coefficient in [0, 1], or the ridge. Buffers take the module's dtype (float32 unless moved
    with `.to(dtype)` / `.double()` before or after fitting); fitting itself runs in float64.
    """

    _state = ("location_", "covariance_", "precision_", "shrinkage_")
    location_: Tensor
    covariance_: Tensor
    precision_: Tensor
    shrinkage_: Tensor

    def __init__(self, shrinkage: str = "ledoit_wolf", ridge: float = 0.01):
        super().__init__()
        _check_shrinkage(shrinkage)
        self.shrinkage = shrinkage
        self.ridge = ridge
        self._register_empty({})

    @torch.no_grad()
    def fit(self, features: Tensor) -> GaussianScorer:
        """Fit on defect-free features (N, D), N >= 2. Returns self."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"expected features of shape (N, D) with N >= 2, got {tuple(features.shape)}")
        moments = _Moments(chunk=1)
        moments.update(features[None])  # one position: (1, N, D)
        location, cov, coef = moments.gaussian(slice(None), self.shrinkage, self.ridge)
        self._set("location_", location[0])
        self._set("covariance_", cov[0])
        self._set("precision_", _precision(cov[0]))
        self._set("shrinkage_", coef[0])
        return self

    @torch.no_grad()
    def score(self, features: Tensor, squared: bool = False) -> Tensor:
        """Mahalanobis distance of each row of features (N, D) to the fitted Gaussian: (N,).

        The distance sqrt((x - location_)^T precision_ (x - location_)) by default; its square
        (what sklearn's `mahalanobis` returns) with `squared=True`. Computed in the buffers'
        dtype.
        """
        self._check_fitted()
        diff = features.to(self.location_.dtype) - self.location_  # (N, D)
        dist2 = ((diff @ self.precision_) * diff).sum(-1).clamp_min(0)
        return dist2 if squared else dist2.sqrt()

    def forward(self, features: Tensor) -> Tensor:
        return self.score(features)


class StandardisedSumScorer(nn.Module):
    """A Gaussian over each block of columns of the feature vectors; an image's score is the sum
    over blocks of its Mahalanobis distance there, less that block's centre, over its spread.

    blocks: the widths of the column blocks, in order (they add up to D).
    The centres and spreads (`set_standardisation`) are the mean and standard deviation of each
    block's distances on defect-free images no block Gaussian was fitted on, so each block weighs
    alike whatever its width. `fit` sets them to 0 and 1, and the scorer counts as fitted once
    they are set.
    """

    centre_: Tensor  # (n_blocks,) buffer
    spread_: Tensor  # (n_blocks,) buffer
    standardised_: Tensor  # () bool buffer: the centres and spreads are set

    def __init__(self, blocks: Sequence[int], shrinkage: str = "ledoit_wolf", ridge: float = 0.01):
        super().__init__()
        if not blocks or min(blocks) < 1:
            raise ValueError(f"blocks must be positive widths, got {list(blocks)}")
        self.blocks = tuple(int(b) for b in blocks)
        self.scorers = nn.ModuleList(GaussianScorer(shrinkage, ridge) for _ in self.blocks)
        self.register_buffer("centre_", torch.zeros(len(self.blocks)))
        self.register_buffer("spread_", torch.ones(len(self.blocks)))
        self.register_buffer("standardised_", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a scorer saved before the flag existed was saved standardised (fitting sets both at once)
        if prefix + "centre_" in state_dict and prefix + "standardised_" not in state_dict:
            state_dict[prefix + "standardised_"] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def gaussians(self) -> list[GaussianScorer]:
        """The blocks' Gaussians, in order."""
        return [s for s in self.scorers if isinstance(s, GaussianScorer)]

    @property
    def is_fitted(self) -> bool:
        return all(s.is_fitted for s in self.gaussians) and bool(self.standardised_)

    def split(self, features: Tensor) -> list[Tensor]:
        """features (N, D) -> its column blocks [(N, width), ...]."""
        if features.ndim != 2 or features.shape[1] != sum(self.blocks):
            raise ValueError(f"expected features of shape (N, {sum(self.blocks)}), got {tuple(features.shape)}")
        return list(torch.split(features, list(self.blocks), dim=1))

    @torch.no_grad()
    def fit(self, features: Tensor) -> StandardisedSumScorer:
        """Fit each block's Gaussian on defect-free features (N, D), N >= 2. Returns self."""
        for scorer, block in zip(self.gaussians, self.split(features)):
            scorer.fit(block)
        self.centre_ = torch.zeros_like(self.centre_)
        self.spread_ = torch.ones_like(self.spread_)
        self.standardised_ = torch.tensor(False, device=self.standardised_.device)
        return self

    @torch.no_grad()
    def block_distances(self, features: Tensor) -> Tensor:
        """(N, n_blocks): each row's Mahalanobis distance to each block's Gaussian."""
        return torch.stack([s.score(b) for s, b in zip(self.gaussians, self.split(features))], dim=1)

    def set_standardisation(self, distances: Tensor) -> None:
        """Centre and spread each block by its distances (N, n_blocks), N >= 2, of defect-free
        images the Gaussians did not see (a spread of 0 is taken as 1)."""
        if distances.ndim != 2 or distances.shape[1] != len(self.blocks) or distances.shape[0] < 2:
            raise ValueError(f"expected distances of shape (N >= 2, {len(self.blocks)}), got {tuple(distances.shape)}")
        d = distances.double()
        spread = d.std(dim=0)
        spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        self.centre_ = d.mean(dim=0).to(self.centre_)
        self.spread_ = spread.to(self.spread_)
        self.standardised_ = torch.tensor(True, device=self.standardised_.device)

    def combine(self, distances: Tensor) -> Tensor:
        """(N, n_blocks) distances -> (N,) the sum of the standardised distances."""
        return ((distances - self.centre_.to(distances)) / self.spread_.to(distances)).sum(dim=1)

    @torch.no_grad()
    def score(self, features: Tensor) -> Tensor:
        """(N, D) -> (N,) the image scores."""
        return self.combine(self.block_distances(features))

    def forward(self, features: Tensor) -> Tensor:
        return self.score(features)


def out_of_fold_block_distances(
    scorer: StandardisedSumScorer,
    features: Tensor,
    folds: Sequence[Sequence[int]],
    shrinkage: str = "ledoit_wolf",
    ridge: float = 0.01,
) -> Tensor:
    """`out_of_fold_scores` of each of `scorer`'s column blocks of features (N, D): (N, n_blocks)."""
    return torch.stack([out_of_fold_scores(b, folds, shrinkage, ridge) for b in scorer.split(features)], dim=1)


def out_of_fold_scores(
    features: Tensor, folds: Sequence[Sequence[int]], shrinkage: str = "ledoit_wolf", ridge: float = 0.01
) -> Tensor:
    """Cross-fitted Mahalanobis distances of features (N, D): each row scored by a `GaussianScorer`
    fitted on the rows of every other fold, so no row is scored by a Gaussian that saw it. (N,).

    folds: lists of row indices that together hold every row of range(N) exactly once; each fold
    must leave at least 2 rows to fit on.
    """
    n = features.shape[0]
    flat = sorted(int(i) for fold in folds for i in fold)
    if flat != list(range(n)):
        raise ValueError(f"the folds must hold every row of range({n}) exactly once")
    scores = torch.empty(n, dtype=torch.float64)
    for fold in folds:
        if not len(fold):
            continue
        held = torch.as_tensor(list(fold), dtype=torch.long)
        rest = torch.ones(n, dtype=torch.bool)
        rest[held] = False
        if int(rest.sum()) < 2:
            raise ValueError(f"a fold of {len(fold)} of {n} rows leaves fewer than 2 to fit on")
        scorer = GaussianScorer(shrinkage, ridge).fit(features[rest])
        scores[held] = scorer.score(features[held]).double()
    return scores


class PatchGaussianScorer(_FittedBuffers):
    """A Gaussian per spatial position of a feature map (PaDiM); scores are distance maps.

    shrinkage, ridge: as `GaussianScorer`, applied at every position.
    n_channels: keep a random subset of this many channels (PaDiM's random dimensionality
        reduction); None keeps all.
    groups: deal the kept channels at random into this many equal groups, each with its own
        Gaussian per position (a block-diagonal covariance); a position's squared distance is the
        sum over its groups'. 1: one Gaussian over all kept channels. The kept channels must
        divide into the groups.
    seed: seeds the torch Generator that draws the subset and the groups.
    chunk: positions processed at a time, bounding the float64 temporaries to
        chunk x C x C values.
    radius: `score_map` scores each position against the Gaussians within this many positions of
        it (a (2 radius + 1)^2 square, clamped at the borders) and keeps the smallest distance, so
        a feature that a neighbouring position's Gaussian explains (an edge that shifts by a cell
        or two between photos) is normal; 0 scores each position against its own Gaussian only.
        Fitting does not depend on it.

    Fitted state (buffers): channel_index_ (C',) the kept channels, group after group, each
    group's sorted; with c = C' / groups and one row per position and group (position-major),
    location_ (H*W*groups, c); precision_ (H*W*groups, c, c); shrinkage_ (H*W*groups,);
    map_size_ (2,) = (H, W). No covariance is
    kept: at 64 x 64 positions and 100 channels it would double 164 MB of float32 state.
    """

    _state = ("channel_index_", "location_", "precision_", "shrinkage_", "map_size_")
    channel_index_: Tensor
    location_: Tensor
    precision_: Tensor
    shrinkage_: Tensor
    map_size_: Tensor

    def __init__(
        self,
        shrinkage: str = "ledoit_wolf",
        ridge: float = 0.01,
        n_channels: int | None = None,
        seed: int = 0,
        chunk: int = 512,
        radius: int = 0,
        groups: int = 1,
    ):
        super().__init__()
        _check_shrinkage(shrinkage)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if n_channels is not None and n_channels % groups:
            raise ValueError(f"{n_channels} channels do not divide into {groups} equal groups")
        self.shrinkage = shrinkage
        self.ridge = ridge
        self.n_channels = n_channels
        self.seed = seed
        self.chunk = chunk
        self.radius = radius
        self.groups = groups
        self._register_empty({"channel_index_": torch.long, "map_size_": torch.long})
        self._moments: _Moments | None = None

    def _select(self, features: Tensor) -> Tensor:
        """(N, C, H, W) -> (H*W*groups, N, C' / groups): the kept channels, one row per position
        and group."""
        x = features.index_select(1, self.channel_index_.to(features.device))
        if self.groups == 1:
            return x.flatten(2).permute(2, 0, 1)
        n = x.shape[0]
        x = x.reshape(n, self.groups, -1, x.shape[-2] * x.shape[-1])  # (N, G, c, H*W)
        return x.permute(3, 1, 0, 2).reshape(-1, n, x.shape[2])

    @torch.no_grad()
    def partial_fit(self, features: Tensor) -> PatchGaussianScorer:
        """Accumulate one batch of defect-free feature maps (B, C, H, W). Returns self.

        The first batch fixes the channel subset and the map size; call `finalize` after the
        last batch.
        """
        if features.ndim != 4:
            raise ValueError(f"expected feature maps of shape (N, C, H, W), got {tuple(features.shape)}")
        if self._moments is None:
            channels = features.shape[1]
            generator = torch.Generator().manual_seed(self.seed)
            if self.groups > 1:
                kept = channels if self.n_channels is None else min(self.n_channels, channels)
                if kept % self.groups:
                    raise ValueError(f"{kept} kept channels do not divide into {self.groups} equal groups")
                drawn = torch.randperm(channels, generator=generator)[:kept]
                index = drawn.reshape(self.groups, -1).sort(-1).values.flatten()
            elif self.n_channels is None or self.n_channels >= channels:
                index = torch.arange(channels)
            else:
                index = torch.randperm(channels, generator=generator)[: self.n_channels].sort().values
            self._set("channel_index_", index)
            self._set("map_size_", torch.tensor(features.shape[-2:]))
            self._moments = _Moments(self.chunk)
        else:
            self._check_map_size(features)
        self._moments.update(self._select(features))
        return self

    @torch.no_grad()
    def finalize(self, keep_moments: bool = False) -> PatchGaussianScorer:
        """Turn the accumulated sums into per-position means, precisions and shrinkages.

        keep_moments: keep the sums afterwards (until `release_moments`), for `moments` and
            `refitted` to take samples out of them; they are as large as the fitted state, twice.
        """
        moments = self._moments
        if moments is None or moments.n < 2:
            raise RuntimeError("finalize() needs at least 2 samples passed to partial_fit()")
        self._from_moments(moments)
        self._moments = moments if keep_moments else None
        return self

    def _check_map_size(self, features: Tensor) -> None:
        """Refuse feature maps of another size than the fitted ones."""
        if tuple(features.shape[-2:]) != tuple(self.map_size_.tolist()):
            raise ValueError(
                f"feature maps are {tuple(features.shape[-2:])}, expected {tuple(self.map_size_.tolist())}"
            )

    def release_moments(self) -> None:
        """Forget the sums kept by `finalize(keep_moments=True)`."""
        self._moments = None

    @torch.no_grad()
    def moments(self, features: Tensor, into: _Moments | None = None, mask: Tensor | None = None) -> _Moments:
        """The sums over feature maps (N, C, H, W), added to `into` if given, with the fitted
        channels and about the same shift as the sums kept by `finalize(keep_moments=True)` (the
        fitted means if none are kept), so that they add to and subtract from those.

        mask: (rows, N) booleans, one row per position and group as `row_distances`'s; only the
        samples marked true are summed at each row."""
        self._check_fitted()
        if into is None:
            kept = self._moments.shift if self._moments is not None else None
            shift = kept if kept is not None else self.location_
            into = _Moments(self.chunk, shift.to(features.device))
        self._check_map_size(features)
        into.update(self._select(features), mask)
        return into

    @torch.no_grad()
    def row_distances(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distances (rows, N) of feature maps (N, C, H, W) to each row's own
        Gaussian (one row per position and group, position-major; no neighbourhood)."""
        self._check_fitted()
        self._check_map_size(features)
        x = self._select(features.to(self.location_.dtype))
        own = torch.arange(x.shape[0], device=x.device)[:, None]
        return self._own_distances(x, own)[:, 0]

    @torch.no_grad()
    def refitted(self, moments: _Moments) -> PatchGaussianScorer:
        """A new scorer with this one's settings and channels, fitted from `moments` (e.g. the kept
        sums less those of some samples, for out-of-fold scores: `_Moments.combined`)."""
        self._check_fitted()
        if moments.n < 2:
            raise ValueError(f"a refit needs at least 2 samples, got {moments.n}")
        other = PatchGaussianScorer(
            self.shrinkage, self.ridge, self.n_channels, self.seed, self.chunk, self.radius, self.groups
        )
        other = other.to(dtype=self.location_.dtype, device=self.location_.device)
        other._set("channel_index_", self.channel_index_)
        other._set("map_size_", self.map_size_)
        other._from_moments(moments)
        return other

    def _from_moments(self, moments: _Moments) -> None:
        """Set the fitted means, precisions and shrinkages from the sums."""
        positions = moments.s1.shape[0]
        locations, precisions, coefs = [], [], []
        dtype = self.location_.dtype
        for start in range(0, positions, self.chunk):
            location, cov, coef = moments.gaussian(slice(start, start + self.chunk), self.shrinkage, self.ridge)
            locations.append(location.to(dtype))
            precisions.append(_precision(cov).to(dtype))
            coefs.append(coef.to(dtype))
        self._set("location_", torch.cat(locations))
        self._set("precision_", torch.cat(precisions))
        self._set("shrinkage_", torch.cat(coefs))

    def fit(self, features: Tensor | Iterable[Tensor]) -> PatchGaussianScorer:
        """Fit on feature maps (N, C, H, W), or on an iterable of such batches. Returns self."""
        self._moments = None
        batches = [features] if isinstance(features, Tensor) else features
        for batch in batches:
            self.partial_fit(batch)
        return self.finalize()

    @torch.no_grad()
    def score_map(self, features: Tensor, squared: bool = False) -> Tensor:
        """Mahalanobis distance of every position of features (N, C, H, W) to its Gaussian: (N, H, W).

        Not squared unless `squared=True`, as `GaussianScorer.score`. Computed in the buffers'
        dtype, `chunk` positions at a time.
        """
        self._check_fitted()
        self._check_map_size(features)
        n, _, h, w = features.shape
        x = self._select(features.to(self.location_.dtype))  # (H*W, N, C')
        offsets = [
            (dy, dx) for dy in range(-self.radius, self.radius + 1) for dx in range(-self.radius, self.radius + 1)
        ]
        # moved[q, k]: the feature at q - offsets[k] against the Gaussian at q (the features moved
        # by each offset, all scored at once against each position's own Gaussian)
        sources = torch.stack([_shifted_positions(h, w, -dy, -dx, x.device) for dy, dx in offsets], 1)
        if self.groups > 1:  # rows position * groups + group; a position's groups add up
            group = torch.arange(self.groups, device=x.device)
            sources = (sources[:, None] * self.groups + group[None, :, None]).flatten(0, 1)  # (H*W*G, K)
        moved = self._own_distances(x, sources)
        if self.groups > 1:
            moved = moved.reshape(h * w, self.groups, *moved.shape[1:]).sum(1)  # (H*W, K, N)
        dist2 = moved[:, offsets.index((0, 0))]
        for k, (dy, dx) in enumerate(offsets):
            if dy == dx == 0:
                continue
            # moved back: the feature at p against the Gaussian at p + (dy, dx), where that is on the map
            back = moved[_shifted_positions(h, w, dy, dx, x.device), k]
            rows = torch.arange(h, device=x.device) + dy
            cols = torch.arange(w, device=x.device) + dx
            inside = (((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]).flatten()
            dist2 = torch.where(inside[:, None], torch.minimum(dist2, back), dist2)
        dist2 = dist2.clamp_min(0).T.reshape(n, h, w)
        return dist2 if squared else dist2.sqrt()

    def _own_distances(self, x: Tensor, sources: Tensor) -> Tensor:
        """Squared distances (H*W, K, N): for each position q and each k, the N feature vectors
        x[sources[q, k]] (x: (H*W, N, C'), sources: (H*W, K) positions) against q's own Gaussian,
        in one matrix product per position."""
        k, n, c = sources.shape[1], x.shape[1], x.shape[2]
        if torch.jit.is_tracing():
            # an export: one product over every position, so the graph holds one node for it, not
            # one per block of positions (each with its slice of the Gaussians)
            diff = (x[sources] - self.location_[:, None, None]).reshape(-1, k * n, c)  # (H*W, K*N, C')
            return (torch.bmm(diff, self.precision_) * diff).sum(-1).reshape(-1, k, n)
        dist2 = torch.empty(x.shape[0], k, n, dtype=x.dtype, device=x.device)
        rows = x.reshape(x.shape[0], n * c)  # a row's N feature vectors side by side
        # rows (one per position and group) at a time: a block holds chunk x N x (all kept channels)
        # values of differences, whatever the number of groups; index_select and in-place steps, as
        # the block's K x N copies of the features are most of the time
        step = max(1, self.chunk * self.groups // k)
        for start in range(0, x.shape[0], step):
            sl = slice(start, start + step)
            diff = rows.index_select(0, sources[sl].flatten()).view(-1, k * n, c)  # (p, K*N, C')
            diff -= self.location_[sl, None]
            dist2[sl] = torch.bmm(diff, self.precision_[sl]).mul_(diff).sum(-1).view(-1, k, n)
        return dist2

    def forward(self, features: Tensor) -> Tensor:
        return self.score_map(features)


def _shifted_positions(h: int, w: int, dy: int, dx: int, device: torch.device | None = None) -> Tensor:
    """(H*W,) the flat index of position (row + dy, column + dx) for each position of an H x W
    map, rows and columns clamped to the map."""
    rows = (torch.arange(h, device=device) + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=device) + dx).clamp(0, w - 1)
    return (rows[:, None] * w + cols[None, :]).flatten()


PIXEL_THRESHOLD_RULES = ("pixels", "image_max")


def pixel_threshold_of(maps, quantile: float, rule: str = "pixels") -> float:
    """The pixel threshold from maps (N, H, W) of defect-free images.

    "pixels": the `quantile` of all their map values (a share of defect-free pixels above it);
    "image_max": the `quantile` of each map's largest value (a share of defect-free images
    showing any region), which a few odd images among them move far less.
    """
    values = np.asarray(maps, dtype=np.float64)
    if rule == "pixels":
        return float(np.quantile(values, quantile))
    if rule == "image_max":
        return float(np.quantile(values.reshape(len(values), -1).max(axis=1), quantile))
    raise ValueError(f"rule: {rule!r} is not one of {', '.join(PIXEL_THRESHOLD_RULES)}")


def _window_max(x: Tensor, window: int) -> Tensor:
    """The largest value within window // 2 places either side of each element of x (..., L) along
    its last dimension -> (..., L); window odd, only the elements inside x count. By doubling: the
    maxima of runs of 1, 2, 4, ..., k elements (k the largest power of two up to the window), each
    from two of the one before, then two overlapping runs of k cover each window: about log2(window)
    element-wise maxima, whatever the window (a plain sliding maximum reads window values an element)."""
    half = window // 2
    n = x.shape[-1]
    runs, k = F.pad(x, (half, half), value=float("-inf")), 1  # runs[j]: the maximum of padded j .. j + k - 1
    while 2 * k <= window:
        runs = torch.maximum(runs[..., :-k], runs[..., k:])
        k *= 2
    return torch.maximum(runs[..., :n], runs[..., window - k : window - k + n])


def _square_pool(maps: Tensor, window: int, largest: bool) -> Tensor:
    """The largest (or smallest) value of the window x window square around each pixel of maps
    (N, H, W) -> (N, H, W); window odd. A square's extreme is the extreme over its rows of each
    row's, so two 1-D passes (`_window_max`)."""
    x = maps if largest else -maps
    rows = _window_max(x.transpose(-1, -2), window).transpose(-1, -2)  # each column's runs, down
    out = _window_max(rows, window)  # ... then across
    return out if largest else -out


def remove_background(maps: Tensor, window: int) -> Tensor:
    """maps (N, H, W) minus their grey opening over a window x window square (a white top-hat)
    -> (N, H, W), non-negative. The opening (the smallest value of each square, then the largest of
    those) is the part of the map no narrower than the window: a raised stretch that holds a
    window x window square drops to 0, while a blob narrower than it keeps its height above its surroundings.
    window 0 returns the maps as they are; otherwise it must be odd."""
    if window == 0:
        return maps
    if window < 0 or window % 2 == 0:
        raise ValueError(f"window: expected 0 or an odd number of pixels, got {window}")
    opening = _square_pool(_square_pool(maps, window, largest=False), window, largest=True)
    return (maps - opening).clamp_min(0.0)


def sharpen_to_local_peak(maps: Tensor, window: int, power: float = 1.0) -> Tensor:
    """maps (N, H, W), non-negative, each pixel times (its value over the largest value within the
    window x window square around it) ** power -> (N, H, W). A blob keeps its peak and its flanks
    fall, so the peaks of different maps rank as before while a blob wider than what raised it
    narrows. window 0 returns the maps as they are; otherwise it must be odd."""
    if window == 0:
        return maps
    if window < 0 or window % 2 == 0:
        raise ValueError(f"window: expected 0 or an odd number of pixels, got {window}")
    peak = _square_pool(maps, window, largest=True)  # (N, H, W)
    ratio = (maps / peak.clamp_min(1e-12)).clamp(0.0, 1.0)
    return maps * ratio**power


def shown_map(maps: Tensor, background: int, window: int, power: float) -> Tensor:
    """The map shown from the map the regions are cut from, (N, H, W) -> (N, H, W): its background
    wider than `background` px removed (`remove_background`), then each blob narrowed within
    `window` px (`sharpen_to_local_peak`); a 0 skips either step."""
    return sharpen_to_local_peak(remove_background(maps, background), window, power)


def region_background(score: ScoreConfig) -> int:
    """The background window of the map the regions are cut from: `score.map_background_window`
    with `score.regions_after_background`, else 0 (the step is then the map shown's alone)."""
    return score.map_background_window if score.regions_after_background else 0


def shown_steps(score: ScoreConfig) -> tuple[int, int, float]:
    """The (background, window, power) of `shown_map` from the map the detector gives: its
    background step unless that map already had it (`region_background`), then the narrowing."""
    background = 0 if score.regions_after_background else score.map_background_window
    return background, score.map_sharpen_window, score.map_sharpen_power


def shows_another_map(score: ScoreConfig) -> bool:
    """Whether the map shown differs from the map the regions are cut from (a step of `shown_map` is on)."""
    background, window, _ = shown_steps(score)
    return bool(background or window)


def shown_maps(maps: np.ndarray, score: ScoreConfig) -> np.ndarray:
    """Maps (N, H, W) as the detector gives them (the regions are cut from these) -> the maps shown
    and ranked pixel by pixel (`shown_map` with `shown_steps`), or the maps themselves when no
    step is on. Both steps commute with a positive factor per map, so they may follow any
    normalisation."""
    if not shows_another_map(score):
        return maps
    tensor = torch.from_numpy(np.ascontiguousarray(maps))
    return shown_map(tensor, *shown_steps(score)).numpy()


def score_factor(normalisation: str, scores: Tensor, threshold: float) -> Tensor:
    """The factor (N,) that `score.map_normalisation` gives each of N maps, from their image
    scores (N,) and the image threshold: score / threshold for image_mean_score and image_score,
    min(1, score / threshold) for image_score_capped (a photo the image decision flags keeps its
    map), 1 for the others."""
    if normalisation not in SCORE_FACTORS:
        return torch.ones_like(scores)
    ratio = scores / threshold
    return ratio.clamp(max=1.0) if normalisation == "image_score_capped" else ratio


def moved_pixel_threshold(normalisation: str, threshold: float, pixel_threshold: float, new: float) -> float:
    """The pixel threshold that goes with image threshold `new` in place of `threshold`: maps with an
    image-score factor (`SCORE_FACTORS`) scale by score / threshold, so it moves by threshold / new
    (regions stay where they were wherever the factor is score / threshold under both); other maps
    keep it. Raises ValueError for a `new` of 0 or below on such maps."""
    if normalisation not in SCORE_FACTORS or new == threshold:
        return pixel_threshold
    if new <= 0:
        raise ValueError(
            f"threshold: must be above 0 for maps scaled by score / threshold "
            f"(score.map_normalisation {normalisation}), got {new}"
        )
    return pixel_threshold * threshold / new


def gaussian_smooth(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Gaussian blur of maps (N, H, W) -> (N, H, W), as `scipy.ndimage.gaussian_filter`.

    Separable: one 1-D kernel of radius int(truncate * sigma + 0.5), applied along rows then
    columns, with scipy's mode="reflect" border (the edge pixel repeated: d c b a | a b c d,
    numpy's "symmetric"), which torch's own padding modes do not offer, hence index padding.
    sigma <= 0 returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    out = maps
    for dim in (-1, -2):
        out = out.transpose(dim, -1)  # the smoothed axis last (transpose: exports to ONNX)
        size = out.shape[-1]
        index = torch.arange(-radius, size + radius, device=maps.device) % (2 * size)
        index = torch.where(index >= size, 2 * size - 1 - index, index)
        padded = out.index_select(-1, index)
        shape = padded.shape
        out = F.conv1d(padded.reshape(-1, 1, shape[-1]), kernel).reshape(*shape[:-1], size)
        out = out.transpose(-1, dim)
    return out
