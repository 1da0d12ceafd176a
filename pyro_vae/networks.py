"""Encoder and decoder networks (plain ``torch.nn``; Pyro sees them through ``pyro.module``)."""

from __future__ import annotations

import torch
from torch import nn

from .config import Config

_ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh}


def mlp(widths: tuple[int, ...], activation: str) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """x ↦ (μ(x), σ(x)), the parameters of q(z|x) = N(μ(x), diag σ²(x)).

    An MLP ``D → hidden… → 2·z_dim`` whose second half is log σ², so σ = exp(½ log σ²)
    (Kingma & Welling 2014, appendix C.2).

    Parameters
    ----------
    input_dim, z_dim : int
        D and the latent dimension.
    hidden : tuple of int
        Hidden-layer widths.
    activation : str
        ``"relu"``, ``"softplus"`` or ``"tanh"``.
    """

    def __init__(self, input_dim: int, z_dim: int, hidden: tuple[int, ...], activation: str):
        super().__init__()
        self.net = mlp((input_dim, *hidden, 2 * z_dim), activation)

    @classmethod
    def from_config(cls, config: Config) -> "GaussianEncoder":
        return cls(config.input_dim, config.z_dim, config.hidden, config.activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (batch, D) → ``loc``, ``scale``, each (batch, z_dim)."""
        loc, log_var = self.net(x).chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var)


class Decoder(nn.Module):
    """z ↦ f(z), the likelihood's parameters: an MLP ``z_dim → reversed(hidden)… → D·k``.

    Parameters
    ----------
    input_dim, z_dim : int
        D and the latent dimension.
    hidden : tuple of int
        The encoder's hidden widths; the decoder uses them in reverse order.
    activation : str
        Hidden-layer non-linearity.
    params_per_dim : int
        k, the number of likelihood parameters per data dimension.
    """

    def __init__(
        self,
        input_dim: int,
        z_dim: int,
        hidden: tuple[int, ...],
        activation: str,
        params_per_dim: int = 1,
    ):
        super().__init__()
        self.input_dim = input_dim
        self.params_per_dim = params_per_dim
        self.net = mlp((z_dim, *reversed(hidden), input_dim * params_per_dim), activation)

    @classmethod
    def from_config(cls, config: Config, params_per_dim: int = 1) -> "Decoder":
        return cls(config.input_dim, config.z_dim, config.hidden, config.activation, params_per_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (..., z_dim) → likelihood parameters (..., D, params_per_dim)."""
        out = self.net(z)
        return out.reshape(*out.shape[:-1], self.input_dim, self.params_per_dim)
