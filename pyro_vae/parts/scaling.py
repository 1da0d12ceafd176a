"""Per-feature standardisation inside the model, so that every number stays in data units.

Real-valued features on very different scales (a table of measurements) train slowly when fed
to a network as they are. :class:`Standardize` holds the training data's mean m and scale s per
feature: the encoder reads x' = (x − m)/s, and the likelihood p(x'|z) is pushed back through
x = m + s·x' as a ``TransformedDistribution``, so log p(x|z) = log p(x'|z) − Σ_d log s_d
nats (the change of variables; Bishop 2006, eq. 1.27). Samples, reconstructions and every
log-likelihood (test −ELBO, importance-sampled NLL, diagnostics) are therefore in the data's
own units and compare with a model fit on the raw data.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class Standardize(nn.Module):
    """x ↦ (x − loc) / scale per feature, with loc and scale (D,) buffers set by :meth:`adapt`.

    Parameters
    ----------
    input_dim : int
        D, the number of features.
    """

    def __init__(self, input_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        """Set loc and scale to the mean and standard deviation of ``x`` (N, D); a feature
        that never varies keeps scale 1."""
        std = x.std(0, correction=0) if x.shape[0] > 1 else torch.ones_like(self.scale)
        self.loc.copy_(x.mean(0))
        self.scale.copy_(torch.where(std > 1e-8 * (1 + x.abs().amax(0)), std,
                                     torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, D) data → standardised (…, D)."""
        return (x - self.loc) / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(…, D) standardised → data units."""
        return self.loc + self.scale * y

    def push(self, base: dist.TorchDistribution) -> dist.TorchDistribution:
        """p(x) from p(x') with event shape (D,): x = loc + scale·x', log-Jacobian included."""
        return dist.TransformedDistribution(
            base, [dist.transforms.AffineTransform(self.loc, self.scale, event_dim=1)])
