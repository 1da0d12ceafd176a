"""One frozen dataclass that describes a run.

The CLI builds a :class:`Config`, ``fit`` stores it as ``config.json`` in the run directory and
:func:`pyro_vae.load` rebuilds exactly the same objects from it, so every run is fully described
by data (the pythae convention).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import CheckpointError, ConfigError

#: Identifies a pyro_vae ``config.json`` and the layout of the run directory.
FORMAT = "pyro_vae.run"
#: Bumped whenever a run directory written by an older version can no longer be read.
FORMAT_VERSION = 1

BINARIZE_MODES = ("dynamic", "static", "none")
ACTIVATIONS = ("relu", "softplus", "tanh")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Config:
    """Everything needed to train a VAE and to rebuild it afterwards.

    Parameters
    ----------
    dataset : str
        ``"fashion-mnist"``, ``"mnist"``, ``"kmnist"`` or the path of a ``.npy``/``.npz`` file.
    test_dataset : str or None
        Path of a separate test file; ``None`` uses the dataset's test split (named datasets,
        ``.npz`` with ``x_test``) or a seeded 10% hold-out.
    data_dir : str or None
        Folder searched first for named datasets, and where torchvision downloads them.
    limit : int or None
        Use only the first ``limit`` training images.
    binarize : {"dynamic", "static", "none"} or None
        Binarisation of grey levels for the Bernoulli likelihood; ``None`` means ``"dynamic"``
        for Bernoulli and is the only accepted value for other likelihoods.
    z_dim : int
        Dimension of the latent code z.
    hidden : tuple of int
        Widths of the hidden layers of the encoder; the decoder mirrors them.
    activation : {"relu", "softplus", "tanh"}
        Hidden-layer non-linearity.
    prior : str
        Name in :data:`pyro_vae.priors.PRIORS`.
    prior_scale : float
        Scale b of the Laplace prior (λ = 1/b); the standard Normal prior ignores it.
    likelihood : str
        Name in :data:`pyro_vae.likelihoods.LIKELIHOODS`.
    obs_scale : float
        Fixed standard deviation c of the Normal likelihood, p(x|z) = N(f(z), c²I).
    epochs, batch_size, lr, seed : int, int, float, int
        Training length, minibatch size, Adam learning rate and random seed.
    device : {"auto", "cpu", "cuda"}
        Where parameters and data live; ``"auto"`` picks CUDA when available.
    data_shape : tuple of int or None
        Shape of one data point, e.g. ``(28, 28)``; filled in from the data by ``fit``.

    Raises
    ------
    ConfigError
        On construction, for any invalid value or combination, with a one-line message.
    """

    dataset: str = "fashion-mnist"
    test_dataset: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    binarize: str | None = None
    z_dim: int = 20
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    prior: str = "normal"
    prior_scale: float = 1.0
    likelihood: str = "bernoulli"
    obs_scale: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    data_shape: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        from .likelihoods import LIKELIHOODS
        from .priors import PRIORS

        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.data_shape is not None:
            object.__setattr__(self, "data_shape", tuple(self.data_shape))
        _positive_int("z_dim", self.z_dim, "--z-dim")
        _positive_int("epochs", self.epochs, "--epochs")
        _positive_int("batch_size", self.batch_size, "--batch-size")
        if self.limit is not None:
            _positive_int("limit", self.limit, "--limit")
        if not self.hidden:
            raise ConfigError("--hidden needs at least one layer width, e.g. --hidden 400")
        for width in self.hidden:
            _positive_int("hidden", width, "--hidden")
        _positive_float("lr", self.lr, "--lr")
        _positive_float("prior_scale", self.prior_scale, "--prior-scale")
        _positive_float("obs_scale", self.obs_scale, "--obs-scale")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")
        _choice("prior", self.prior, tuple(PRIORS), "--prior")
        _choice("likelihood", self.likelihood, tuple(LIKELIHOODS), "--likelihood")
        _choice("activation", self.activation, ACTIVATIONS, "--activation")
        _choice("device", self.device, DEVICES, "--device")
        if self.likelihood == "bernoulli":
            if self.binarize is None:
                object.__setattr__(self, "binarize", "dynamic")
            _choice("binarize", self.binarize, BINARIZE_MODES, "--binarize")
        elif self.binarize is not None:
            raise ConfigError(
                f"--binarize applies to the bernoulli likelihood only, not {self.likelihood!r}; "
                "drop --binarize or use --likelihood bernoulli"
            )
        if self.data_shape is not None:
            if not self.data_shape or any(
                not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in self.data_shape
            ):
                raise ConfigError(f"data_shape must be positive integers, got {self.data_shape!r}")

    @property
    def input_dim(self) -> int:
        """Number of dimensions D of one flattened data point (784 for 28×28 images)."""
        if self.data_shape is None:
            raise ConfigError("data_shape is unknown until the data are loaded")
        return math.prod(self.data_shape)

    def replace(self, **changes) -> "Config":
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dictionary, with the format marker and version."""
        body = dataclasses.asdict(self)
        body["hidden"] = list(self.hidden)
        if self.data_shape is not None:
            body["data_shape"] = list(self.data_shape)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": body}

    @classmethod
    def from_dict(cls, payload: object) -> "Config":
        """Rebuild a config written by :meth:`to_dict`.

        Raises
        ------
        CheckpointError
            If ``payload`` is not a pyro_vae config, comes from an incompatible format version,
            has unknown or missing keys, or holds invalid values.
        """
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(
                "config.json is not a pyro_vae run configuration; "
                "point to a folder written by 'pyro-vae fit'"
            )
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"config.json has format version {version!r} but this pyro_vae reads version "
                f"{FORMAT_VERSION}; retrain with this version or install the one that wrote it"
            )
        body = payload.get("config")
        if not isinstance(body, dict):
            raise CheckpointError("config.json has no 'config' table; the file is damaged")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise CheckpointError(
                f"config.json has unknown keys {unknown}; it was written by another pyro_vae "
                "version: install that version or retrain"
            )
        if body.get("data_shape") is None:
            raise CheckpointError("config.json lacks data_shape; the file is damaged, retrain")
        if not isinstance(body.get("hidden", []), list):
            raise CheckpointError("config.json: 'hidden' must be a list of layer widths")
        try:
            return cls(**body)
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"config.json holds an invalid value: {err}") from None


def _positive_int(name: str, value: object, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: object, flag: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{flag} must be a positive finite number, got {value!r}")


def _choice(name: str, value: object, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
