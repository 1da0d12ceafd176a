"""Encoder and decoder networks (plain ``torch.nn``; Pyro sees them through ``pyro.module``).

Three architectures, chosen with ``--arch``:

- ``mlp``: fully connected layers of the widths in ``--hidden``; the decoder mirrors them.
- ``conv``: two stride-2 convolutions (32 and 64 channels, 4×4 kernels) and a dense layer of
  width ``hidden[-1]``; the decoder mirrors it with transposed convolutions (the DCGAN-style
  layout of Radford et al. 2016, reduced). Needs (H, W) images with H and W multiples of 4.
- ``linear``: one affine map each way, x ↦ z and z ↦ x: with a Gaussian likelihood this is
  probabilistic PCA (Tipping & Bishop 1999).

A network part builds the *encoder*, x (batch, D) → features (batch, F), which the variational
family turns into q(z|x) (``families.py``), and the *decoder*, z (..., z_dim) → likelihood
parameters (..., D, k). Register another with :func:`~pyro_vae.registry.register_network`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import Option, Part, positive_int, register_network

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


class Decoder(nn.Module):
    """z ↦ f(z), the likelihood's parameters: ``net`` (n, z_dim) → (n, D·k), reshaped.

    Parameters
    ----------
    net : nn.Module
        The decoder network.
    input_dim : int
        D.
    params_per_dim : int
        k, the number of likelihood parameters per data dimension.
    channels_first : bool
        ``net`` returns (n, k, D) (convolutions) rather than (n, D, k).
    """

    def __init__(self, net: nn.Module, input_dim: int, params_per_dim: int = 1,
                 channels_first: bool = False):
        super().__init__()
        self.net = net
        self.input_dim, self.params_per_dim = input_dim, params_per_dim
        self.channels_first = channels_first

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (..., z_dim) → likelihood parameters (..., D, k)."""
        lead = z.shape[:-1]
        out = self.net(z.reshape(math.prod(lead), z.shape[-1]))
        if self.channels_first:
            out = out.transpose(-1, -2)  # (n, H·W, k)
        return out.reshape(*lead, self.input_dim, self.params_per_dim)


class Network(Part):
    """Base class: builds an encoder and a decoder for data of one shape."""

    def check_data_shape(self, data_shape: tuple[int, ...]) -> str | None:
        """Why data of this shape do not fit the network, or None."""
        return None

    def encoder(self, data_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
        """The encoder network x (batch, D) → features (batch, F), and F."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decoder(self, z_dim: int, data_shape: tuple[int, ...], params_per_dim: int) -> Decoder:
        """The decoder z (..., z_dim) → likelihood parameters (..., D, k)."""
        raise NotImplementedError  # pragma: no cover - abstract


class _HiddenLayers(Network):
    """Networks with hidden layers of declared widths and one activation."""

    hidden = Option(int, (400,), "Hidden layer width; repeat for more layers "
                    "(--hidden 512 --hidden 256).", positive_int, flag="hidden", multiple=True)
    activation = Option(str, "relu", "Hidden-layer non-linearity.", flag="activation",
                        choices=tuple(_ACTIVATIONS))

    def __init__(self, hidden: tuple[int, ...] = (400,), activation: str = "relu"):
        self.hidden, self.activation = tuple(hidden), activation


@register_network("mlp")
class MLP(_HiddenLayers):
    """Fully connected layers of the widths ``hidden``; the decoder mirrors them."""

    summary = "fully connected"

    def encoder(self, data_shape):
        widths = (math.prod(data_shape), *self.hidden)
        return mlp(widths, self.activation, final_activation=True), self.hidden[-1]

    def decoder(self, z_dim, data_shape, params_per_dim):
        d = math.prod(data_shape)
        net = mlp((z_dim, *reversed(self.hidden), d * params_per_dim), self.activation)
        return Decoder(net, d, params_per_dim)


@register_network("conv")
class Conv(_HiddenLayers):
    """Two stride-2 convolutions and a dense layer of width ``hidden[-1]``, mirrored."""

    summary = "images with sides divisible by 4"

    def check_data_shape(self, data_shape):
        if len(data_shape) != 2 or data_shape[0] % 4 or data_shape[1] % 4:
            return (f"--arch conv needs images whose height and width are multiples of 4, but "
                    f"the data have shape {tuple(data_shape)}; use --arch mlp")
        return None

    def encoder(self, data_shape):
        height, width = data_shape
        act = _ACTIVATIONS[self.activation]
        body = nn.Sequential(
            nn.Unflatten(-1, (1, height, width)),
            nn.Conv2d(1, _CHANNELS[0], 4, stride=2, padding=1),
            act(),
            nn.Conv2d(_CHANNELS[0], _CHANNELS[1], 4, stride=2, padding=1),
            act(),
            nn.Flatten(),
            nn.Linear(_CHANNELS[-1] * (height // 4) * (width // 4), self.hidden[-1]),
            act(),
        )
        return body, self.hidden[-1]

    def decoder(self, z_dim, data_shape, params_per_dim):
        height, width = data_shape
        act = _ACTIVATIONS[self.activation]
        net = nn.Sequential(
            nn.Linear(z_dim, self.hidden[-1]),
            act(),
            nn.Linear(self.hidden[-1], _CHANNELS[-1] * (height // 4) * (width // 4)),
            act(),
            nn.Unflatten(-1, (_CHANNELS[-1], height // 4, width // 4)),
            nn.ConvTranspose2d(_CHANNELS[1], _CHANNELS[0], 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(_CHANNELS[0], params_per_dim, 4, stride=2, padding=1),
            nn.Flatten(-2),  # (n, k, H·W)
        )
        return Decoder(net, height * width, params_per_dim, channels_first=True)


@register_network("linear")
class Linear(Network):
    """One affine map each way: the encoder is the identity, the family's head the map x ↦ z."""

    summary = "one affine map each way; with a normal likelihood, probabilistic PCA"

    def encoder(self, data_shape):
        return nn.Identity(), math.prod(data_shape)

    def decoder(self, z_dim, data_shape, params_per_dim):
        d = math.prod(data_shape)
        return Decoder(nn.Linear(z_dim, d * params_per_dim), d, params_per_dim)
