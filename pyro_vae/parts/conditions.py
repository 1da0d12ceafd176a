"""What a conditional model conditions on: a class label or a vector of covariates.

A conditional VAE (Sohn, Lee & Yan 2015) writes p(z) p(x | z, y) with the guide q(z | x, y);
the semi-supervised M2 model (Kingma, Mohamed, Rezende & Welling 2014, §3.1.2) adds the class
label y as a latent site with the prior p(y) = Cat(1/K) and the classifier q(y|x). Both feed y
to the networks as a vector c = condition(y) of ``dim`` entries: the encoder reads (x, c) and
the decoder cat[z, c] (:mod:`.networks`).

- :class:`LabelCondition`: y is a class 0 … K−1 and c its one-hot code, (…, K).
- :class:`CovariateCondition`: y is a vector of C real covariates (table columns) and c the
  covariates standardised with the training data's mean and standard deviation, (…, C).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class Condition(nn.Module):
    """Base class: y → the vector c (…, :attr:`dim`) that the networks read.

    Attributes
    ----------
    dim : int
        Entries of c.
    labels : bool
        y is a class label (int64 values 0 … K−1), which M2 can treat as a latent site.
    """

    labels: bool = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    @torch.no_grad()
    def adapt(self, y: torch.Tensor) -> None:
        """Initialise from the training data's y before a new run trains (nothing by default)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class LabelCondition(Condition):
    """y ∈ {0, …, K−1}, read by the networks as its one-hot code c = e_y, (…, K).

    The label's prior, for the semi-supervised model, is :meth:`prior`: p(y) = Cat(1/K)
    (Kingma et al. 2014, eq. 4).

    Parameters
    ----------
    num_classes : int
        K ≥ 2.
    """

    labels = True

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.num_classes = num_classes
        self.register_buffer("_logits", torch.zeros(num_classes), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Labels (…) of int64 → one-hot codes (…, K) of float32, on the module's device.

        Written as a comparison with 0…K−1 rather than ``F.one_hot``, whose range check reads
        the labels' values and so cannot be recorded into a graph (``--compiler inductor``);
        labels are checked against K when the data are read (:func:`~pyro_vae.io.data.check_labels`).
        """
        classes = torch.arange(self.num_classes, device=self._logits.device)
        return (y.to(classes.device).unsqueeze(-1) == classes).to(self._logits.dtype)

    def prior(self) -> dist.Categorical:
        """p(y) = Cat(1/K), batch shape (), on the module's device."""
        return dist.Categorical(logits=self._logits)


class CovariateCondition(Condition):
    """y ∈ ℝ^C, a row's covariates, read as (y − m)/s with the training mean m and standard
    deviation s (s = 1 for a covariate that does not vary), so that the networks see values
    of order one whatever the covariates' units.

    Parameters
    ----------
    dim : int
        C.
    """

    def __init__(self, dim: int):
        super().__init__(dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def adapt(self, y: torch.Tensor) -> None:
        """m and s from the training covariates ``y`` (N, C)."""
        y = y.to(self.mean)
        scale = y.std(0, correction=0)
        self.mean = y.mean(0)
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Covariates (…, C) → standardised (…, C), on the module's device."""
        return (y.to(self.mean) - self.mean) / self.scale
