"""Corruption processes C(x̃|x) of the denoising autoencoder.

The guide encodes a corrupted x̃ ~ C(x̃|x) while the likelihood scores the clean x, so the model
learns to undo the corruption (Vincent et al. 2008; Goodfellow, Bengio & Courville 2016, §14.5).
The corruption is a data transformation drawn with torch's RNG at each training step, not a
Pyro sample site: it belongs to neither p nor q.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


class GaussianCorruption:
    """x̃ = x + σ ε, ε ~ N(0, I): additive isotropic Gaussian noise.

    Parameters
    ----------
    sigma : float
        σ > 0, in the units of the data.
    """

    def __init__(self, sigma: float):
        self.sigma = sigma

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, D) → (batch, D)."""
        return x + self.sigma * torch.randn_like(x)


class MaskCorruption:
    """x̃_d = 0 with probability p, else x_d: masking noise (Vincent et al. 2008, §2.3).

    Parameters
    ----------
    p : float
        Drop probability, 0 < p < 1.
    """

    def __init__(self, p: float):
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, D) → (batch, D)."""
        return x * torch.bernoulli(torch.full_like(x, 1.0 - self.p))


def parse_corruption(spec: str | None) -> GaussianCorruption | MaskCorruption | None:
    """``"gaussian:σ"`` or ``"mask:p"`` → the corruption; ``None`` → no corruption.

    Raises
    ------
    ConfigError
        For any other spelling or an out-of-range parameter.
    """
    if spec is None:
        return None
    kind, _, value = spec.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if kind == "gaussian" and number > 0 and number != float("inf"):
        return GaussianCorruption(number)
    if kind == "mask" and 0 < number < 1:
        return MaskCorruption(number)
    raise ConfigError(
        f"--corrupt {spec!r} is not understood; use gaussian:σ with σ > 0 (e.g. gaussian:0.3) "
        "or mask:p with 0 < p < 1 (e.g. mask:0.5)"
    )
