"""A pixel classifier fitted on photos whose defects are marked, drawing the maps in place of the
defect-free Gaussian's distances.

At every map position it reads the stacked stage features the pixel Gaussians read and the log of
their Mahalanobis distance there, and gives the probability that the position is defective
(logistic regression). The distance carries what is unusual for that place on defect-free photos;
the features carry what marked defects look like, so a few marked pits teach it which unusual
things are pits and which are silhouettes, glints or the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pitscope.scoring import _FittedBuffers


def probe_inputs(patches: Tensor, distances: Tensor) -> Tensor:
    """Stacked stage features (B, C, h, w) and Mahalanobis distances (B, h, w) -> the probe's
    inputs per position (B, h, w, C + 1): the features, then log(1 + distance)."""
    return torch.cat([patches, torch.log1p(distances.clamp_min(0))[:, None]], dim=1).permute(0, 2, 3, 1)


class DefectProbe(_FittedBuffers):
    """A classifier from a position's inputs (`probe_inputs`) to P(defect): logistic regression, or
    with `hidden` units one hidden ReLU layer before it.

    weight_decay: L2 penalty on the weights (of the standardised inputs), per sample.
    hidden: units of the hidden layer; 0 for none (logistic regression).
    max_iter: L-BFGS iterations.
    seed: seeds the hidden layer's initial weights.
    inputs: "both" reads the features and the distance; "features" the features alone (a probe
        that knows nothing of the defect-free Gaussians; not kept in a model file).

    Fitted state (buffers): location_ (D,) and scale_ (D,) standardise the inputs; hidden_weight_
    (D, hidden) and hidden_bias_ (hidden,), empty without a hidden layer; weight_ (D or hidden,)
    and bias_ () the regression; positive_weight_ () the weight the positives had against the
    negatives (their counts' ratio), kept to describe the fit.
    """

    _state = ("location_", "scale_", "hidden_weight_", "hidden_bias_", "weight_", "bias_", "positive_weight_")
    location_: Tensor
    scale_: Tensor
    hidden_weight_: Tensor
    hidden_bias_: Tensor
    weight_: Tensor
    bias_: Tensor
    positive_weight_: Tensor

    def __init__(
        self, weight_decay: float = 0.1, hidden: int = 0, max_iter: int = 200, seed: int = 0, inputs: str = "both"
    ):
        super().__init__()
        if weight_decay < 0 or hidden < 0:
            raise ValueError(f"weight_decay and hidden must be >= 0, got {weight_decay} and {hidden}")
        if inputs not in ("both", "features"):
            raise ValueError(f"inputs must be 'both' or 'features', got {inputs!r}")
        self.inputs = inputs
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.max_iter = max_iter
        self.seed = seed
        self._register_empty({})

    def fit(self, inputs: Tensor, targets: Tensor) -> DefectProbe:
        """inputs (N, D); targets (N,) in [0, 1], the share of each position's cell that is marked
        defective. Every position the mask touches (target > 0) is a positive, its loss weighted by
        the ratio of negatives to positives, so the two sets weigh the same in count; a position's
        target is still its share, so a cell the mask barely touches pulls its probability only
        a little up. Returns self."""
        if inputs.ndim != 2 or targets.shape != inputs.shape[:1]:
            raise ValueError(
                f"expected inputs (N, D) and targets (N,), got {tuple(inputs.shape)}, {tuple(targets.shape)}"
            )
        if not bool((targets > 0).any()) or not bool((targets < 1).any()):
            raise ValueError("the probe needs both marked and unmarked positions")
        # a hidden layer fits in float32 (it is the costly one), the regression alone in float64
        dtype = torch.float32 if self.hidden else torch.float64
        with torch.inference_mode(False), torch.enable_grad():  # callers may score in inference mode
            x, y = inputs.to(dtype), targets.to(dtype).clamp(0, 1)
            location = x.mean(0)
            scale = x.std(0).clamp_min(1e-6)
            z = (x - location) / scale
            n_pos = float((y > 0).sum())
            positive_weight = (len(y) - n_pos) / n_pos
            sample_weight = torch.where(y > 0, positive_weight, 1.0).to(dtype)
            sample_weight = sample_weight / sample_weight.sum()
            generator = torch.Generator().manual_seed(self.seed)
            width = self.hidden or z.shape[1]
            hidden_weight = torch.randn(z.shape[1], self.hidden, generator=generator, dtype=dtype) / z.shape[1] ** 0.5
            hidden_bias = torch.zeros(self.hidden, dtype=dtype)
            weight = torch.zeros(width, dtype=dtype)
            if self.hidden:  # a zero output layer would leave the hidden layer without gradient
                weight = torch.randn(width, generator=generator, dtype=dtype) / width**0.5
            bias = torch.zeros((), dtype=dtype)
            params = [weight, bias] + ([hidden_weight, hidden_bias] if self.hidden else [])
            for p in params:
                p.requires_grad_(True)
            optimiser = torch.optim.LBFGS(
                params, max_iter=self.max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
            )

            def closure() -> Tensor:
                optimiser.zero_grad()
                h = torch.relu(z @ hidden_weight + hidden_bias) if self.hidden else z
                losses = F.binary_cross_entropy_with_logits(h @ weight + bias, y, reduction="none")
                penalty = (weight**2).sum() + ((hidden_weight**2).sum() if self.hidden else 0.0)
                loss = (losses * sample_weight).sum() + 0.5 * self.weight_decay * penalty
                loss.backward()
                return loss

            optimiser.step(closure)
        self._set("location_", location.detach())
        self._set("scale_", scale.detach())
        self._set("hidden_weight_", hidden_weight.detach())
        self._set("hidden_bias_", hidden_bias.detach())
        self._set("weight_", weight.detach())
        self._set("bias_", bias.detach())
        self._set("positive_weight_", torch.tensor(positive_weight))
        return self

    @torch.no_grad()
    def logits(self, inputs: Tensor) -> Tensor:
        """inputs (..., D) -> logits (...) of P(defect)."""
        self._check_fitted()
        z = (inputs.to(self.location_.dtype) - self.location_) / self.scale_
        if self.hidden_weight_.numel():
            z = torch.relu(z @ self.hidden_weight_ + self.hidden_bias_)
        return z @ self.weight_ + self.bias_

    def probability_map(self, patches: Tensor, distances: Tensor) -> Tensor:
        """Stacked stage features (B, C, h, w) and their distances (B, h, w) -> P(defect) (B, h, w)."""
        x = probe_inputs(patches, distances)
        return torch.sigmoid(self.logits(x if self.inputs == "both" else x[..., :-1]))

    def forward(self, patches: Tensor, distances: Tensor) -> Tensor:
        return self.probability_map(patches, distances)
