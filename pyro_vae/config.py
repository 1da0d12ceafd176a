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
ARCHS = ("mlp", "conv", "linear")
ELBOS = ("trace", "meanfield", "iwae")

#: Options that belong to some choices of a part: option → (part, choices using it, default).
#: Left as None they take the default; set for a part that does not use them, they are refused.
PART_OPTIONS = {
    "prior_scale": ("prior", ("laplace",), 1.0),
    "prior_df": ("prior", ("studentt",), 3.0),
    "prior_components": ("prior", ("mog", "vamp"), 50),
    "obs_scale": ("likelihood", ("normal", "laplace"), 0.1),
    "min_obs_scale": ("likelihood", ("normal-learned",), 0.01),
    "flows": ("guide", ("iaf",), 2),  # and the flow prior, see Config.uses
}
#: Priors with parameters: with a point-mass guide they can grow log p(h) without bound.
LEARNABLE_PRIORS = ("mog", "vamp", "flow")


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
    prior_scale : float or None
        Scale b of the ``laplace`` prior (λ = 1/b); default 1.
    prior_df : float or None
        Degrees of freedom ν of the ``studentt`` prior; default 3.
    prior_components : int or None
        K, the number of mixture components (``mog``) or pseudo-inputs (``vamp``); default 50.
    flows : int or None
        Number of flow layers of the ``iaf`` guide and of the ``flow`` prior; default 2.
    likelihood : str
        Name in :data:`pyro_vae.likelihoods.LIKELIHOODS`.
    obs_scale : float or None
        Fixed scale c of the ``normal`` (N(f(z), c²I)) and ``laplace`` likelihoods; default 0.1.
    min_obs_scale : float or None
        Floor of the decoder's scale for ``normal-learned``, against collapse; default 0.01.

        These part options are None unless given; :meth:`setting` resolves their defaults.
        Given for a part that is not selected (``prior_df`` with the normal prior), they are
        refused rather than silently ignored.
    guide : str
        Name in :data:`pyro_vae.guides.GUIDES`: ``normal``, ``iaf`` or ``delta``.
    arch : {"mlp", "conv", "linear"}
        Encoder and decoder networks.
    corrupt : str or None
        Denoising corruption C(x̃|x) fed to the guide: ``"gaussian:σ"`` or ``"mask:p"``.
    contractive : float
        λ of the contractive penalty λ‖∂f(x)/∂x‖²_F on the encoder (0 = off).
    elbo : {"trace", "meanfield", "iwae"}
        ``Trace_ELBO``, ``TraceMeanField_ELBO`` or ``RenyiELBO(alpha=0)`` (the IWAE bound).
    particles : int
        Samples of z per data point (R of the Monte Carlo ELBO, K of the IWAE bound).
    beta : float
        Weight of the KL term (β-VAE), applied with ``poutine.scale``.
    kl_warmup : int
        Epochs over which the KL weight rises linearly from 0 to β.
    clip_norm : float or None
        Clip each parameter's gradient to this norm (Pyro's ``clip_args``).
    skip_nonfinite : int
        Batches whose loss or gradient is NaN or infinite that training skips (leaving the
        parameters as they were) before it stops; 0 stops at the first.
    checkpoint_every : int or None
        Also save the training state every this many steps within an epoch, not only at the
        end of each epoch.
    epochs, batch_size, lr, seed : int, int, float, int
        Training length, minibatch size, Adam learning rate and random seed.
    device : {"auto", "cpu", "cuda"}
        Where parameters and data live; ``"auto"`` picks CUDA when available.
    jit : bool or None
        Compile the training objective with ``torch.jit.trace`` (Pyro's ``JitTrace_ELBO``).
        ``None`` compiles whenever the run allows it (see
        :func:`pyro_vae.objectives.jit_unsupported`), ``True`` requires it, ``False`` turns it
        off. The compiled objective computes the same numbers as the uncompiled one.
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
    prior_scale: float | None = None
    prior_df: float | None = None
    prior_components: int | None = None
    flows: int | None = None
    likelihood: str = "bernoulli"
    obs_scale: float | None = None
    min_obs_scale: float | None = None
    guide: str = "normal"
    arch: str = "mlp"
    corrupt: str | None = None
    contractive: float = 0.0
    elbo: str = "trace"
    particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    clip_norm: float | None = None
    skip_nonfinite: int = 0
    checkpoint_every: int | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    jit: bool | None = None
    data_shape: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        from .corruption import parse_corruption
        from .guides import GUIDES
        from .likelihoods import LIKELIHOODS
        from .priors import PRIORS

        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.data_shape is not None:
            object.__setattr__(self, "data_shape", tuple(self.data_shape))
        _positive_int(self.z_dim, "--z-dim")
        _positive_int(self.epochs, "--epochs")
        _positive_int(self.batch_size, "--batch-size")
        if self.limit is not None:
            _positive_int(self.limit, "--limit")
        if not self.hidden:
            raise ConfigError("--hidden needs at least one layer width, e.g. --hidden 400")
        for width in self.hidden:
            _positive_int(width, "--hidden")
        _positive_float(self.lr, "--lr")
        for name in ("prior_scale", "prior_df", "obs_scale", "min_obs_scale"):
            if getattr(self, name) is not None:
                _positive_float(getattr(self, name), _flag(name))
        for name in ("prior_components", "flows"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), _flag(name))
        _positive_int(self.particles, "--particles")
        _positive_float(self.beta, "--beta")
        if not isinstance(self.kl_warmup, int) or isinstance(self.kl_warmup, bool) or (
            self.kl_warmup < 0
        ):
            raise ConfigError(
                f"--kl-warmup must be a whole number of epochs ≥ 0, got {self.kl_warmup!r}"
            )
        if self.clip_norm is not None:
            _positive_float(self.clip_norm, "--clip-norm")
        if not isinstance(self.skip_nonfinite, int) or isinstance(self.skip_nonfinite, bool) or (
            self.skip_nonfinite < 0
        ):
            raise ConfigError(
                f"--skip-nonfinite must be a whole number of batches ≥ 0, got "
                f"{self.skip_nonfinite!r}"
            )
        if self.checkpoint_every is not None:
            _positive_int(self.checkpoint_every, "--checkpoint-every")
        if self.contractive != 0:
            _positive_float(self.contractive, "--contractive")
        parse_corruption(self.corrupt)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not (
            0 <= self.seed < 2**32
        ):
            raise ConfigError(f"--seed must be an integer in [0, 2^32), got {self.seed!r}")
        _choice(self.prior, tuple(PRIORS), "--prior")
        _choice(self.likelihood, tuple(LIKELIHOODS), "--likelihood")
        _choice(self.activation, ACTIVATIONS, "--activation")
        _choice(self.device, DEVICES, "--device")
        _choice(self.guide, tuple(GUIDES), "--guide")
        _choice(self.arch, ARCHS, "--arch")
        _choice(self.elbo, ELBOS, "--elbo")
        for name, (part, choices, _) in PART_OPTIONS.items():
            if getattr(self, name) is not None and not self.uses(name):
                users = f"--{part} {' or '.join(choices)}"
                if name == "flows":
                    users = "--guide iaf or --prior flow"
                raise ConfigError(
                    f"{_flag(name)} applies to {users} only; drop it or choose that {part}"
                )
        self._check_combination()
        if self.jit is not None and not isinstance(self.jit, bool):
            raise ConfigError(f"jit must be true, false or null (automatic), got {self.jit!r}")
        if self.jit:
            from .objectives import jit_unsupported

            reason = jit_unsupported(self)
            if reason is not None:
                raise ConfigError(f"--jit is not possible here: {reason}; drop --jit")
        if self.likelihood == "bernoulli":
            if self.binarize is not None:
                _choice(self.binarize, BINARIZE_MODES, "--binarize")
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

    def uses(self, name: str) -> bool:
        """Whether the part option ``name`` (a key of :data:`PART_OPTIONS`) matters here."""
        part, choices, _ = PART_OPTIONS[name]
        if name == "flows" and self.prior == "flow":
            return True
        return getattr(self, part) in choices

    def setting(self, name: str):
        """The value of part option ``name``: as given, else its default."""
        value = getattr(self, name)
        return PART_OPTIONS[name][2] if value is None else value

    def _check_combination(self) -> None:
        """Refuse combinations of parts that define no sensible objective, saying why."""
        if self.elbo == "iwae" and self.guide == "delta":
            raise ConfigError(
                "--elbo iwae needs a guide with a density to importance-sample from, and a point "
                "mass (--guide delta) has none; use --guide normal or iaf, or --elbo trace"
            )
        if self.prior == "none" and self.guide != "delta":
            raise ConfigError(
                "a flat prior (--prior none) makes the ELBO of a stochastic guide unbounded; "
                "use it with --guide delta (the plain autoencoder) or pick another prior"
            )
        if self.guide == "delta" and self.prior in ("mog", "flow"):
            raise ConfigError(
                f"with a point-mass guide the objective log p(x|h) + log p(h) has no entropy "
                f"term, so the learnable --prior {self.prior} can raise log p(h) without bound; "
                "use --guide normal or a fixed prior (normal, laplace, studentt)"
            )
        if self.elbo == "iwae" and self.particles < 2:
            raise ConfigError(
                "--elbo iwae with one particle is the ordinary ELBO; give --particles K ≥ 2 "
                "(e.g. 5) or use --elbo trace"
            )
        if self.guide == "delta" and self.particles > 1:
            raise ConfigError(
                "a point-mass guide draws the same code every time, so --particles > 1 only "
                "repeats work; drop --particles"
            )
        if self.prior == "vamp" and self.guide != "normal":
            raise ConfigError(
                "--prior vamp mixes the guide's Gaussian posteriors at pseudo-inputs, so it "
                "needs --guide normal"
            )
        if self.elbo == "iwae" and (self.beta != 1.0 or self.kl_warmup > 0):
            raise ConfigError(
                "--beta and --kl-warmup reweight the KL term of the ELBO, which the IWAE bound "
                "does not have; use them with --elbo trace or meanfield"
            )
        if (self.guide == "iaf" or self.prior == "flow") and self.z_dim < 2:
            raise ConfigError("autoregressive flows (--guide iaf, --prior flow) need --z-dim ≥ 2")
        if self.data_shape is not None and self.arch == "conv":
            shape = self.data_shape
            if len(shape) != 2 or shape[0] % 4 or shape[1] % 4:
                raise ConfigError(
                    f"--arch conv needs images whose height and width are multiples of 4, but "
                    f"the data have shape {shape}; use --arch mlp"
                )

    @property
    def binarization(self) -> str | None:
        """The binarisation in effect: ``binarize``, ``"dynamic"`` by default for Bernoulli,
        ``None`` for other likelihoods."""
        if self.likelihood != "bernoulli":
            return None
        return self.binarize or "dynamic"

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
            has unknown keys, lacks ``data_shape``, or holds invalid values. Other missing keys
            take their defaults, so configs written before an option existed still load.
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: Largest count torch can index with, the bound on every size and count option.
MAX_SIZE = 2**31 - 1


def _positive_int(value: object, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
    if value > MAX_SIZE:
        raise ConfigError(f"{flag} must be at most 2^31 - 1, got {value}")


def _positive_float(value: object, flag: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{flag} must be a positive finite number, got {value!r}")


def _choice(value: object, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
