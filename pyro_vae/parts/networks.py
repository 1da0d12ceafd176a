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

Conditional models (:mod:`.conditions`) feed a condition vector c (…, C) to both: the decoder
reads cat[z, c] (built with input z_dim + C), the encoder (x, c) (:meth:`Network.
conditional_encoder`), and the semi-supervised model adds a classifier x ↦ logits of q(y|x)
(:meth:`Network.classifier`), the encoder's architecture with its own weights.
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


class ConditionedEncoder(nn.Module):
    """The encoder of q(z | x, c): ``front`` (x ↦ the input of the first dense layer), the
    first dense layer ``first``, which reads c too, and ``rest``.

    h = rest(W f(x) + V c + b), the dense layer of cat[f(x), c] written as two terms, so that
    when c is enumerated over K classes (the semi-supervised model's guide) f(x) and W f(x) are
    computed once for all K, not K times. ``x`` (batch, D) and ``c`` (…, C) broadcast:
    (K, 1, C) gives features (K, batch, F).
    """

    def __init__(self, front: nn.Module, first: nn.Linear, rest: nn.Module, condition_dim: int):
        super().__init__()
        self.front, self.first, self.rest = front, first, rest
        self.condition = nn.Linear(condition_dim, first.out_features, bias=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(self.front(x)) + self.condition(c))


class ConcatenatedEncoder(nn.Module):
    """The encoder of q(z | x, c) for a network without a dense layer to read c: the features
    of x and c side by side, cat[f(x), c], broadcast over leading dimensions."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        lead = torch.broadcast_shapes(h.shape[:-1], c.shape[:-1])
        return torch.cat([h.expand(*lead, h.shape[-1]), c.expand(*lead, c.shape[-1])], -1)


class Network(Part):
    """Base class: builds an encoder and a decoder for data of one shape (and, for
    conditional models, an encoder that reads the condition and a classifier)."""

    def check_data_shape(self, data_shape: tuple[int, ...]) -> str | None:
        """Why data of this shape do not fit the network, or None."""
        return None

    def encoder(self, data_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
        """The encoder network x (batch, D) → features (batch, F), and F."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decoder(self, z_dim: int, data_shape: tuple[int, ...], params_per_dim: int) -> Decoder:
        """The decoder z (..., z_dim) → likelihood parameters (..., D, k)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def conditional_encoder(self, data_shape: tuple[int, ...], condition_dim: int
                            ) -> tuple[nn.Module, int]:
        """The encoder (x (batch, D), c (…, C)) → features (…, batch, F) of q(z|x, c), and F.

        By default the encoder's features and c side by side (:class:`ConcatenatedEncoder`,
        F + C features); networks with dense layers feed c to the first of them
        (:class:`ConditionedEncoder`).
        """
        encoder, features = self.encoder(data_shape)
        return ConcatenatedEncoder(encoder), features + condition_dim

    def classifier(self, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """x (batch, D) → the K = ``num_classes`` logits of q(y|x): the encoder's architecture
        (its own weights) and a dense layer to K outputs, as Kingma et al. (2014, §3.1.2)
        use the encoder's network for the classifier."""
        encoder, features = self.encoder(data_shape)
        return nn.Sequential(encoder, nn.Linear(features, num_classes))


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

    def conditional_encoder(self, data_shape, condition_dim):
        act = _ACTIVATIONS[self.activation]
        rest = nn.Sequential(act(), *mlp(self.hidden, self.activation, final_activation=True))
        first = nn.Linear(math.prod(data_shape), self.hidden[0])
        return ConditionedEncoder(nn.Identity(), first, rest, condition_dim), self.hidden[-1]


class _Crop(nn.Module):
    """(…, H', W') → (…, H, W): the top-left corner, undoing the encoder's padding."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.height, : self.width]


@register_network("conv")
class Conv(_HiddenLayers):
    """Stride-2 convolutions (kernel 4; 32, 64, 128, 256 channels) until the feature map's
    longer side is at most 8 (at least two), then a dense layer of width ``hidden[-1]``; the
    decoder mirrors it with transposed convolutions (the DCGAN layout of Radford et al. 2016,
    as in most convolutional VAEs).

    Images of any size, grey (H, W) or with C channels (C, H, W): they are padded with zeros at
    the bottom and right to a multiple of 2^stages, and the decoder's output is cropped back.
    The decoder gives k·C maps, the k likelihood parameters of each channel. 28×28 grey images
    get two stages and no padding: the network of the first release.
    """

    summary = "images of any size, grey or colour"

    def check_data_shape(self, data_shape):
        shape = tuple(data_shape)
        if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))):
            return (f"--arch conv needs images, (H, W) or (C, H, W) with C = 1 or 3, but the "
                    f"data have shape {shape}; use --arch mlp")
        if min(shape[-2:]) < 4:
            return f"--arch conv needs images of at least 4×4, not {shape}; use --arch mlp"
        return None

    @staticmethod
    def geometry(data_shape) -> tuple[int, int, int, int, list[int]]:
        """C, H, W, the padded side multiple 2^stages, and the channels of each stage."""
        channels = data_shape[0] if len(data_shape) == 3 else 1
        height, width = data_shape[-2:]
        stages = max(2, math.ceil(math.log2(max(height, width) / 8)))
        widths = [min(_CHANNELS[0] * 2**i, 256) for i in range(stages)]
        return channels, height, width, 2**stages, widths

    def _convolutions(self, data_shape) -> tuple[list[nn.Module], int]:
        """The encoder's layers up to its dense layer, and the size of their output."""
        channels, height, width, multiple, widths = self.geometry(data_shape)
        padded_h, padded_w = (math.ceil(s / multiple) * multiple for s in (height, width))
        act = _ACTIVATIONS[self.activation]
        layers: list[nn.Module] = [nn.Unflatten(-1, (channels, height, width))]
        if (padded_h, padded_w) != (height, width):
            layers.append(nn.ZeroPad2d((0, padded_w - width, 0, padded_h - height)))
        for n_in, n_out in zip([channels, *widths[:-1]], widths):
            layers += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), act()]
        return [*layers, nn.Flatten()], widths[-1] * (padded_h // multiple) * (padded_w // multiple)

    def encoder(self, data_shape):
        layers, small = self._convolutions(data_shape)
        act = _ACTIVATIONS[self.activation]
        return nn.Sequential(*layers, nn.Linear(small, self.hidden[-1]), act()), self.hidden[-1]

    def conditional_encoder(self, data_shape, condition_dim):
        layers, small = self._convolutions(data_shape)
        act = _ACTIVATIONS[self.activation]
        return ConditionedEncoder(nn.Sequential(*layers), nn.Linear(small, self.hidden[-1]),
                                  act(), condition_dim), self.hidden[-1]

    def decoder(self, z_dim, data_shape, params_per_dim):
        channels, height, width, multiple, widths = self.geometry(data_shape)
        small_h, small_w = (math.ceil(s / multiple) for s in (height, width))
        act = _ACTIVATIONS[self.activation]
        layers: list[nn.Module] = [
            nn.Linear(z_dim, self.hidden[-1]), act(),
            nn.Linear(self.hidden[-1], widths[-1] * small_h * small_w), act(),
            nn.Unflatten(-1, (widths[-1], small_h, small_w)),
        ]
        outs = [*reversed(widths[:-1]), params_per_dim * channels]
        for i, (n_in, n_out) in enumerate(zip(reversed(widths), outs)):
            layers.append(nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(act())
        if (small_h * multiple, small_w * multiple) != (height, width):
            layers.append(_Crop(height, width))
        # (n, k·C, H, W) → (n, k, C·H·W): the k parameters of each value, in data order.
        layers += [nn.Unflatten(1, (params_per_dim, channels)), nn.Flatten(2)]
        return Decoder(nn.Sequential(*layers), channels * height * width, params_per_dim,
                       channels_first=True)


@register_network("linear")
class Linear(Network):
    """One affine map each way: the encoder is the identity, the family's head the map x ↦ z."""

    summary = "one affine map each way; with a normal likelihood, probabilistic PCA"

    def encoder(self, data_shape):
        return nn.Identity(), math.prod(data_shape)

    def decoder(self, z_dim, data_shape, params_per_dim):
        d = math.prod(data_shape)
        return Decoder(nn.Linear(z_dim, d * params_per_dim), d, params_per_dim)
