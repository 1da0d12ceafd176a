"""Encoder and decoder networks (plain ``torch.nn``; Pyro sees them through ``pyro.module``).

Three architectures, chosen with ``--arch``:

- ``mlp``: fully connected layers of the widths in ``--hidden``; the decoder mirrors them.
- ``conv``: two stride-2 convolutions (32 and 64 channels, 4×4 kernels) and a dense layer of
  width ``hidden[-1]``; the decoder mirrors it with transposed convolutions (the DCGAN-style
  layout of Radford et al. 2016, reduced). Needs (H, W) images with H and W multiples of 4.
- ``linear``: one affine map each way, x ↦ z and z ↦ x: with a Gaussian likelihood this is
  probabilistic PCA (Tipping & Bishop 1999).

An encoder *body* maps x (batch, D) to features (batch, F); the guide's head turns features into
q(z|x) (``guides.py``). A decoder maps z (..., z_dim) to likelihood parameters (..., D, k).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import Config

_ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh}
_CHANNELS = (32, 64)


def mlp(widths: tuple[int, ...], activation: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (and after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def build_encoder_body(config: Config) -> tuple[nn.Module, int]:
    """The encoder network of ``config.arch`` and its feature dimension F."""
    if config.arch == "linear":
        return nn.Identity(), config.input_dim
    if config.arch == "conv":
        height, width = config.data_shape
        flat = _CHANNELS[-1] * (height // 4) * (width // 4)
        act = _ACTIVATIONS[config.activation]
        body = nn.Sequential(
            nn.Unflatten(-1, (1, height, width)),
            nn.Conv2d(1, _CHANNELS[0], 4, stride=2, padding=1),
            act(),
            nn.Conv2d(_CHANNELS[0], _CHANNELS[1], 4, stride=2, padding=1),
            act(),
            nn.Flatten(),
            nn.Linear(flat, config.hidden[-1]),
            act(),
        )
        return body, config.hidden[-1]
    return mlp((config.input_dim, *config.hidden), config.activation, final_activation=True), (
        config.hidden[-1]
    )


class Decoder(nn.Module):
    """z ↦ f(z), the likelihood's parameters, for the architecture ``config.arch``.

    Parameters
    ----------
    config : Config
        Gives ``arch``, ``z_dim``, ``hidden``, ``activation`` and ``data_shape``.
    params_per_dim : int
        k, the number of likelihood parameters per data dimension.
    """

    def __init__(self, config: Config, params_per_dim: int = 1):
        super().__init__()
        self.input_dim = config.input_dim
        self.params_per_dim = k = params_per_dim
        if config.arch == "linear":
            self.net = nn.Linear(config.z_dim, self.input_dim * k)
        elif config.arch == "conv":
            height, width = config.data_shape
            act = _ACTIVATIONS[config.activation]
            self.net = nn.Sequential(
                nn.Linear(config.z_dim, config.hidden[-1]),
                act(),
                nn.Linear(config.hidden[-1], _CHANNELS[-1] * (height // 4) * (width // 4)),
                act(),
                nn.Unflatten(-1, (_CHANNELS[-1], height // 4, width // 4)),
                nn.ConvTranspose2d(_CHANNELS[1], _CHANNELS[0], 4, stride=2, padding=1),
                act(),
                nn.ConvTranspose2d(_CHANNELS[0], k, 4, stride=2, padding=1),
                nn.Flatten(-2),  # (n, k, H·W)
            )
        else:
            widths = (config.z_dim, *reversed(config.hidden), self.input_dim * k)
            self.net = mlp(widths, config.activation)
        self.channels_first = config.arch == "conv"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (..., z_dim) → likelihood parameters (..., D, k)."""
        lead = z.shape[:-1]
        out = self.net(z.reshape(math.prod(lead), z.shape[-1]))
        if self.channels_first:
            out = out.transpose(-1, -2)  # (n, H·W, k)
        return out.reshape(*lead, self.input_dim, self.params_per_dim)
