"""A run's configuration, in three sections that are validated on their own.

- :class:`ModelConfig`: what :func:`pyro_vae.load` rebuilds: the data shape, z_dim and the
  chosen parts (network, prior, likelihood, variational family) with their options.
- :class:`DataConfig`: where the data come from and how they are binarised.
- :class:`TrainConfig`: the objective, its schedule and the run (epochs, optimiser, device).

:class:`Config` joins them and takes the flat options of the command line
(``Config(prior="studentt", prior_df=5, epochs=3)``); ``fit`` stores it as ``config.json``
(format version 2, :meth:`Config.to_dict`), and format-1 files of the first release still load.
Every option, its default, help text and check is declared once: part options on the part
classes (:mod:`pyro_vae.registry`), the rest as :func:`option` fields below; the CLI is derived
from the same declarations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from . import parts  # noqa: F401  (registers the built-in parts)
from .errors import CheckpointError, ConfigError
from .parts.corruption import parse_corruption
from .registry import (BINARIZE_MODES, DEVICES, FAMILIES, LIKELIHOODS, MAX_SIZE, NETWORKS,
                       OBJECTIVES, PRIORS, Option, non_negative_int, positive, positive_int)

#: The arithmetic of the training step (``--precision``).
PRECISIONS = ("float32", "bf16")
#: What compiles the objective where ``--jit`` is on (``--compiler``).
COMPILERS = ("torchscript", "inductor")

#: Identifies a pyro_vae ``config.json`` and the layout of the run directory.
FORMAT = "pyro_vae.run"
#: Bumped whenever the layout changes; :meth:`Config.from_dict` reads every version up to it.
FORMAT_VERSION = 2
#: The model's parts: the flag (and ``config.json`` key) that chooses each, and its registry.
PART_KINDS = {"arch": NETWORKS, "likelihood": LIKELIHOODS, "guide": FAMILIES, "prior": PRIORS}


def data_unit(data_shape) -> str:
    """What one data point is called in reports: ``image`` for (H, W) or (C, H, W) images with
    C = 1 or 3, else ``row`` (a row of a table, a count matrix or an array of vectors)."""
    shape = tuple(data_shape or ())
    return "image" if len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)) else "row"


def option(type_: type, default: Any, help: str, check=None, **extra) -> Any:
    """A dataclass field declared as an :class:`~pyro_vae.registry.Option`."""
    declared = Option(type_, default, help, check, **extra)
    return field(default=default, metadata={"option": declared})


def section_options(cls) -> dict[str, Option]:
    """Field name → :class:`~pyro_vae.registry.Option` of a configuration section."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}


def _validate_fields(section) -> None:
    for name, declared in section_options(type(section)).items():
        value = declared.validate(getattr(section, name), name.replace("_", "-"))
        object.__setattr__(section, name, value)


def _seed(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        return "must be an integer in [0, 2^32)"
    return None


def _count_of(unit: str):
    """Check: a whole number of ``unit`` ≥ 0."""
    def check(value: Any) -> str | None:
        return None if non_negative_int(value) is None else f"must be a whole number of {unit} ≥ 0"
    return check


def _non_negative(value: Any) -> str | None:
    """Check: a finite number ≥ 0."""
    if value == 0 and not isinstance(value, bool):
        return None
    return None if positive(value) is None else "must be a finite number ≥ 0"


#: The most classes a label condition may have (one-hot codes of this length).
MAX_CLASSES = 10_000


def _condition(spec: Any) -> str | None:
    if not isinstance(spec, str):
        return None  # the type's message
    names = [name.strip() for name in spec.split(",")]
    if spec != "label" and (not all(names) or "label" in names):
        return ("must be label, or the comma-separated names of numeric table columns (e.g. "
                "--condition age,dose)")
    if len(set(names)) != len(names):
        return "names a column twice"
    return None


def _labelled(value: Any) -> str | None:
    if value == "all" or (isinstance(value, str) and value.isascii() and value.isdigit()
                          and 0 < int(value) <= MAX_SIZE):
        return None
    return "must be a positive number of labels to keep, or all"


def _kl_schedule(spec: Any) -> str | None:
    from .training.schedules import parse_kl_schedule

    parse_kl_schedule(spec)  # raises its own one-line ConfigError
    return None


def _corruption(spec: Any) -> str | None:
    parse_corruption(spec)  # raises its own one-line ConfigError
    return None


def _lr_schedule(spec: Any) -> str | None:
    from .training.lr_schedule import parse_lr_schedule

    parse_lr_schedule(spec)  # raises its own one-line ConfigError
    return None


def _fraction(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        return "must be a share in [0, 1), e.g. 0.1"
    return None


@dataclass(frozen=True)
class PartChoice:
    """One chosen part: its ``kind`` (``"prior"`` …), registered ``name`` and every option's
    value (``options``, declared defaults filled in)."""

    kind: str
    name: str
    options: dict = field(default_factory=dict)

    @property
    def cls(self) -> type:
        """The registered class."""
        return PART_KINDS[self.kind][self.name]

    def build(self, *args, **context):
        """An instance: the class called with ``context`` and the options."""
        return self.cls(*args, **context, **self.options)

    def to_dict(self) -> dict:
        """The JSON table of ``config.json``: the name and every option's value."""
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v
                                      for k, v in self.options.items()}}


@dataclass(frozen=True)
class ModelConfig:
    """What describes the model; :func:`pyro_vae.load` rebuilds it from this alone.

    ``arch``, ``prior``, ``likelihood`` and ``guide`` are :class:`PartChoice` s. A model built
    from the user's own networks (``user_built``) records only ``z_dim``, ``data_shape`` and
    its likelihood; its weights are loaded into a model the user builds again.

    Raises
    ------
    ConfigError
        For invalid values or parts that do not work together, with a one-line reason.
    """

    z_dim: int = option(int, 20, "Latent dimension (of the bottom layer z_1, which the decoder "
                        "reads, with --latent-layers).", positive_int)
    latent_layers: int = option(
        int, 1, "Stochastic layers z_L → … → z_1 → x, one sample site each, with a bottom-up "
        "guide (Burda et al. 2016, §5); 2 with --z-dim 100 gives their 100-50 layers.",
        positive_int)
    upper_z_dim: tuple[int, ...] | None = option(
        int, None, "Dimensions of the layers above z_1, bottom up, once per layer "
        "(--upper-z-dim 50). Default: each half the one below.", positive_int, multiple=True)
    standardize: bool | None = option(
        bool, None, "Standardise each feature to mean 0, scale 1 inside the model (encoder input "
        "and likelihood; samples, reconstructions and every log-likelihood stay in the data's "
        "own units). Default: for vectors and tables scored by a likelihood that learns its "
        "scale (normal-learned).",
        flag="standardize/--no-standardize")
    condition: str | None = option(
        str, None, "The conditional VAE p(x|z, y), q(z|x, y) (Sohn et al. 2015): label conditions "
        "on the class label (one-hot), NAMES on these comma-separated numeric table columns "
        "(covariates, taken out of the features).", _condition, metavar="label|NAMES")
    data_shape: tuple[int, ...] | None = None
    #: The number K of classes of a label condition, decided by the training labels.
    num_classes: int | None = None
    #: y is a latent class, observed where labelled, with p(y) and the classifier q(y|x): the
    #: M2 model of Kingma et al. (2014); set by ``--labelled``.
    semi_supervised: bool = False
    arch: PartChoice | None = None
    prior: PartChoice | None = None
    likelihood: PartChoice | None = None
    guide: PartChoice | None = None
    user_built: bool = False

    def __post_init__(self) -> None:
        if self.standardize is not None and not isinstance(self.standardize, bool):
            raise ConfigError(f"standardize must be true, false or null (automatic), got "
                              f"{self.standardize!r}")
        _validate_fields(self)
        if self.upper_z_dim is not None and len(self.upper_z_dim) != self.latent_layers - 1:
            raise ConfigError(
                f"--upper-z-dim gives the dimensions of layers 2 to L, so --latent-layers "
                f"{self.latent_layers} takes {self.latent_layers - 1} of them, not "
                f"{len(self.upper_z_dim)}; give one per layer above z_1, or set --latent-layers "
                f"{len(self.upper_z_dim) + 1}")
        if self.data_shape is not None:
            shape = tuple(self.data_shape) if isinstance(self.data_shape, (list, tuple)) else ()
            if not shape or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0
                                for s in shape):
                raise ConfigError(f"data_shape must be positive integers, got {self.data_shape!r}")
            object.__setattr__(self, "data_shape", shape)
        if self.likelihood is None:
            raise ConfigError("a model needs a likelihood")
        if not self.user_built and None in (self.arch, self.prior, self.guide):
            raise ConfigError("a model needs an arch, a prior and a guide")
        if self.num_classes is not None and (
                not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool)
                or not 2 <= self.num_classes <= MAX_CLASSES):
            raise ConfigError(f"num_classes must be a whole number from 2 to {MAX_CLASSES}, got "
                              f"{self.num_classes!r}")
        if not isinstance(self.semi_supervised, bool):
            raise ConfigError(f"semi_supervised must be true or false, got "
                              f"{self.semi_supervised!r}")
        if self.num_classes is not None and self.condition != "label":
            raise ConfigError("num_classes belongs to a model conditioned on the label "
                              "(--condition label); drop it")
        if self.semi_supervised and self.condition != "label":
            raise ConfigError("--labelled makes the class label a latent site, so it needs "
                              "--condition label, not --condition "
                              f"{self.condition}")

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """(d_1, …, d_L), the dimensions of the stochastic layers, bottom first: z_dim, then
        ``upper_z_dim`` or each layer half the one below (at least 1)."""
        dims = [self.z_dim]
        if self.upper_z_dim is not None:
            return (self.z_dim, *self.upper_z_dim)
        for _ in range(self.latent_layers - 1):
            dims.append(max(1, dims[-1] // 2))
        return tuple(dims)

    @property
    def covariates(self) -> tuple[str, ...] | None:
        """The table columns of a covariate condition (``--condition NAMES``), else None."""
        if self.condition is None or self.condition == "label":
            return None
        return tuple(name.strip() for name in self.condition.split(","))

    @property
    def condition_dim(self) -> int:
        """C, the entries of the condition vector the networks read: K for a label, the
        number of covariates, 0 without a condition.

        Raises
        ------
        ConfigError
            For a label condition whose number of classes the data have not decided yet.
        """
        if self.condition is None:
            return 0
        if self.condition == "label":
            if self.num_classes is None:
                raise ConfigError("the number of classes is unknown until the labels are read")
            return self.num_classes
        return len(self.covariates)

    @property
    def input_dim(self) -> int:
        """Number of dimensions D of one flattened data point (784 for 28×28 images)."""
        if self.data_shape is None:
            raise ConfigError("data_shape is unknown until the data are loaded")
        return math.prod(self.data_shape)

    @property
    def standardizes(self) -> bool:
        """Whether the model standardises its data: ``standardize``, or when that is None
        (automatic), for (N, D) data scored by a likelihood over the real line that learns its
        scale (a fixed ``--obs-scale`` keeps its meaning in data units)."""
        if self.standardize is not None:
            return self.standardize
        return (self.data_shape is not None and len(self.data_shape) == 1
                and self.likelihood.cls.real_line and self.likelihood.cls.learns_scale)

    @property
    def real_vectors(self) -> bool:
        """Whether the data are (N, D) vectors scored by a likelihood over the real line: they
        train with the defaults for real-valued data (:meth:`TrainConfig.for_data`)."""
        return (self.data_shape is not None and len(self.data_shape) == 1
                and self.likelihood.cls.real_line)

    def check(self) -> None:
        """Refuse parts that do not work together, saying why (rules over capabilities)."""
        if self.standardize and not self.likelihood.cls.real_line:
            raise ConfigError(
                f"--standardize maps the data to the real line, which the "
                f"{self.likelihood.name!r} likelihood does not score; drop --standardize or use "
                f"--likelihood {_names(LIKELIHOODS, 'real_line')}")
        if self.user_built:
            return
        prior, family = self.prior.cls, self.guide.cls
        if self.condition is not None and prior.needs_encoder:
            raise ConfigError(
                f"--prior {prior.name} is a mixture of the guide's posteriors at pseudo-inputs, "
                "which a conditional guide q(z|x, y) would need labels for; use another prior "
                "with --condition")
        if not prior.proper and not family.point_mass:
            raise ConfigError(
                f"a flat prior (--prior {prior.name}) makes the ELBO of a stochastic guide "
                f"unbounded; use it with --guide {_names(FAMILIES, 'point_mass')} (the plain "
                "autoencoder) or pick another prior")
        if prior.needs_encoder and not family.gaussian:
            raise ConfigError(
                f"--prior {prior.name} mixes the guide's Gaussian posteriors at pseudo-inputs, so "
                f"it needs --guide {_names(FAMILIES, 'gaussian')}")
        if family.point_mass and prior.learnable:
            fixed = ", ".join(n for n, c in PRIORS.parts.items() if c.proper and not c.learnable)
            raise ConfigError(
                f"with a point-mass guide the objective log p(x|h) + log p(h) has no entropy "
                f"term, so the learnable --prior {prior.name} can raise log p(h) without bound; "
                f"use --guide {_names(FAMILIES, 'gaussian')} or a fixed prior ({fixed})")
        if self.latent_layers > 1:
            self._check_layers(prior, family)
        top = "--upper-z-dim (of the top layer)" if self.latent_layers > 1 else "--z-dim"
        for part, dim, flag in ((prior, self.layer_dims[-1], top),
                                (family, self.z_dim, "--z-dim")):
            least, why = part.min_z_dim
            if dim < least:
                raise ConfigError(f"{why} (--{part.kind} {part.name}) need {flag} ≥ {least}")
        if self.data_shape is not None:
            problem = self.arch.build().check_data_shape(self.data_shape)
            if problem is not None:
                raise ConfigError(problem)

    def _check_layers(self, prior, family) -> None:
        """The rules of hierarchical models (``latent_layers`` ≥ 2)."""
        flag = f"--latent-layers {self.latent_layers}"
        if self.condition is not None:
            raise ConfigError(f"{flag} is built for unconditional models; drop --condition or "
                              "--labelled, or use one stochastic layer")
        if family.point_mass:
            raise ConfigError(f"{flag} stacks stochastic layers, and a point-mass guide "
                              f"(--guide {family.name}) has none; use --guide "
                              f"{_names(FAMILIES, 'has_density')}")

    def to_dict(self) -> dict:
        """The ``model`` table of ``config.json`` (format 2)."""
        body = {**{name: getattr(self, name) for name in section_options(ModelConfig)},
                "data_shape": list(self.data_shape or []) or None}
        if self.condition is None:
            del body["condition"]  # unconditional runs are written as before conditions existed
        else:
            body.update(num_classes=self.num_classes, semi_supervised=self.semi_supervised)
        if self.latent_layers == 1:  # and one-layer runs as before hierarchical models
            del body["latent_layers"], body["upper_z_dim"]
        if self.user_built:
            body["user_built"] = True
        for kind in PART_KINDS:
            if getattr(self, kind) is not None:
                body[kind] = getattr(self, kind).to_dict()
        return body


def _names(registry, capability: str) -> str:
    """``normal or iaf``: the parts of ``registry`` that have ``capability``."""
    return " or ".join(n for n, c in registry.parts.items() if getattr(c, capability))


@dataclass(frozen=True)
class DataConfig:
    """Where the data come from and how grey levels are binarised."""

    dataset: str = option(
        str, "fashion-mnist", "fashion-mnist, mnist, kmnist, shapes (rendered 32×32 shapes with "
        "known factors), a .npy/.npz file of (N, H, W) or "
        "(N, D) data (uint8 0-255, floats, or counts for a count likelihood; a .npz holds "
        "x_train and optional x_test; colour as (N, H, W, 3) or (N, 3, H, W)), a folder of "
        "PNG/JPEG images (one subfolder per class), or a .csv/.parquet table whose numeric "
        "columns are the features.")
    test_dataset: str | None = option(
        str, None, "Separate test file (.npy, .npz with x_test, .csv or .parquet). Default: the "
        "dataset's test split, else a seeded 10% hold-out.")
    data_dir: str | None = option(
        str, None, "Folder searched first for named datasets and used for downloads.")
    limit: int | None = option(int, None, "Use only the first N training images.", positive_int)
    binarize: str | None = option(
        str, None, "Bernoulli likelihood only: dynamic (fresh draw of each grey level every "
        "epoch; default), static (once), none (data already 0/1).", choices=BINARIZE_MODES)
    channels_first: bool | None = option(
        bool, None, "Layout of 4-d image arrays: (N, C, H, W) or (N, H, W, C). Default: the "
        "end with 1 or 3 entries.", flag="channels-first/--channels-last")
    image_size: int | None = option(
        int, None, "Image folders: resize the shorter side to S and crop the centre S×S "
        "(needed when the images differ in size).", positive_int, metavar="S")
    strict: bool = option(
        bool, False, "Image folders: refuse unreadable files instead of skipping them with a "
        "warning.")
    label_column: str | None = option(
        str, None, "Tables: the column of class labels, taken out of the features (for latent "
        "maps and encodings).", metavar="NAME")
    drop_non_numeric: bool = option(
        bool, False, "Tables: drop columns that are not numbers instead of refusing the table.")
    labelled: str | None = option(
        str, None, "The semi-supervised M2 model (Kingma et al. 2014): keep N training labels, "
        "as many of each class (drawn with --seed), and treat the other images as unlabelled, "
        "their class a latent site summed out exactly; all keeps every label (a training label "
        "of -1 marks an image without one).", _labelled,
        metavar="N|all")
    validation_fraction: float | None = option(
        float, None, "Share of the training data held out (seeded, the same rows whatever "
        "--seed) as the validation set that --early-stopping, --lr-schedule plateau and the "
        "kept best model go by; never the test set. Default: 0.1 when --early-stopping or "
        "--lr-schedule plateau needs one, else 0 (no validation set).", _fraction, metavar="F")
    validation_dataset: str | None = option(
        str, None, "Separate validation file (.npy, .npz with x_test, .csv or .parquet), "
        "instead of --validation-fraction.", metavar="PATH")
    stream: bool | None = option(
        bool, None, ".npy files: leave the training rows in the file and read them batch by "
        "batch through a memory map, shuffled in blocks. Default: when the file is larger than "
        "half the available memory.", flag="stream/--no-stream")
    #: Tables: the feature columns' names, in the order the model reads them, and the class
    #: names of a label column that holds names (codes are their positions). Set by ``fit``
    #: from the training table, so that test tables are read by name, not by position.
    columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in DATA_DECIDED:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(v, str) for v in value):
                    raise ConfigError(f"{name} must be a list of names, got {value!r}")
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.labelled, int) and not isinstance(self.labelled, bool):
            object.__setattr__(self, "labelled", str(self.labelled))  # fit(labelled=100)
        for name in ("channels_first", "stream"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name} must be true, false or null (automatic), got "
                                  f"{value!r}")
        _validate_fields(self)
        if self.validation_dataset is not None and self.validation_fraction:
            raise ConfigError("give --validation-fraction or --validation-dataset, not both")
        table = is_table_file(self.dataset)
        for name in ("label_column", "drop_non_numeric"):
            if getattr(self, name) and not table:
                raise ConfigError(f"--{name.replace('_', '-')} applies to tables (.csv, "
                                  ".parquet) only; drop it")

    @property
    def labelled_count(self) -> int | None:
        """The number of training labels ``--labelled`` keeps; None for all of them (or
        without ``--labelled``)."""
        return None if self.labelled in (None, "all") else int(self.labelled)


#: Images per SVI step unless --batch-size says otherwise (fewer when the data are fewer).
DEFAULT_BATCH = 128
#: File endings of the tables that ``--dataset`` reads (columns by name).
TABLE_SUFFIXES = (".csv", ".parquet")


def is_table_file(name) -> bool:
    """Whether ``name`` (a ``--dataset`` value) is a table file: .csv or .parquet."""
    return str(name).lower().endswith(TABLE_SUFFIXES)


#: The ``dataset`` of a run trained on data given in memory (``fit(data=...)``) without a
#: source file.
IN_MEMORY = "in-memory data"

#: α of the semi-supervised model's classification term unless --classifier-weight says
#: otherwise (see the README, "Labels").
DEFAULT_CLASSIFIER_WEIGHT = 300.0

#: DataConfig fields that the data decide (not options): read from the training table.
DATA_DECIDED = ("columns", "classes")
#: ModelConfig fields that the data decide (not options): the shape of one data point and the
#: number of classes of a label condition.
MODEL_DECIDED = ("data_shape", "num_classes")


@dataclass(frozen=True)
class TrainConfig:
    """The objective, its schedule, and how the run trains."""

    elbo: str = option(str, "trace", "trace (Trace_ELBO), meanfield (analytic KL where known), "
                       "iwae (IWAE bound, RenyiELBO α=0), iwae-dreg (IWAE bound, doubly-reparameterised "
                       "gradient), tc (β-TCVAE: --beta weighs the total correlation).", choices=OBJECTIVES.names)
    particles: int = option(int, 1, "Samples of z per image: R of the Monte Carlo ELBO, K ≥ 2 of "
                            "the IWAE bound.", positive_int)
    beta: float = option(float, 1.0, "Weight of the KL term (β-VAE); with --elbo tc, of the "
                         "total correlation alone (β-TCVAE).", positive)
    kl_warmup: int = option(int, 0, "Epochs over which the KL weight rises linearly from 0 to "
                            "β.", _count_of("epochs"))
    kl_schedule: str | None = option(
        str, None, "Cyclical KL annealing (Fu et al. 2019): M cycles over the run's steps, the "
        "KL weight rising linearly from 0 to β over the first share R of each cycle, then β.",
        _kl_schedule, metavar="cyclical:M,R")
    free_bits: float = option(
        float, 0.0, "Free bits λ (Kingma et al. 2016): each latent dimension's KL term, "
        "averaged over the batch, counts as at least λ nats, so the objective stops pushing "
        "it below λ.", _non_negative, metavar="LAMBDA")
    corrupt: str | None = option(
        str, None, "Denoising: feed the guide a corrupted x̃ (Gaussian noise, or each pixel "
        "zeroed with probability p, on what the encoder reads) while the likelihood scores the "
        "clean x.", _corruption,
        metavar="gaussian:σ|mask:p")
    classifier_weight: float | None = option(
        float, None, "--labelled only: weight α of the classification term α·log q(y|x) of the "
        "labelled images (Kingma et al. 2014, eq. 9).", _non_negative,
        metavar="ALPHA")
    labelled_passes: int | None = option(
        int, None, "--labelled only: step through the labelled images P times an epoch, "
        "their batches spread evenly among the unlabelled ones, at most one a step (P = 1 is "
        "the schedule of Pyro's ss_vae_M2.py example). Default: a labelled batch beside every "
        "unlabelled one, the labelled images cycled through as often as that takes.",
        positive_int, metavar="P")
    contractive: float = option(float, 0.0, "λ of the contractive penalty λ‖∂f(x)/∂x‖²_F on "
                                "the encoder.", _non_negative)
    clip_norm: float | None = option(
        float, None, "Clip the gradient of each parameter tensor to this norm (Pyro's "
        "clip_args; not one global norm).", positive)
    skip_nonfinite: int = option(
        int, 0, "Skip up to N batches whose loss or gradient is NaN or infinite (the parameters "
        "stay as they were) before stopping.", _count_of("batches"), metavar="N")
    checkpoint_every: int | None = option(
        int, None, "Also save the training state every STEPS steps, not only after each epoch.",
        positive_int, metavar="STEPS")
    early_stopping: int | None = option(
        int, None, "Stop when the validation -ELBO has not improved by --min-delta for "
        "PATIENCE epochs in a row (--epochs stays the upper bound); the run keeps the model of "
        "its best epoch.", positive_int, metavar="PATIENCE")
    validation_nll_every: int | None = option(
        int, None, "Also estimate the validation set's log-likelihood every N epochs by "
        "importance sampling (K = 100 samples per image, the bound of Burda et al. 2016, "
        "eq. 8) into metrics.csv's validation_nll.", positive_int, metavar="N")
    min_delta: float = option(
        float, 0.0, "--early-stopping: the least fall of the validation -ELBO (nats per image) "
        "that counts as an improvement.", _non_negative, metavar="NATS")
    lr_schedule: str = option(
        str, "constant", "Learning rate per epoch: constant; plateau[:FACTOR,PATIENCE] "
        "(ReduceLROnPlateau on the validation -ELBO; default 0.5,2); cosine[:WARMUP] (linear "
        "warm-up over WARMUP epochs, then cosine annealing to the last epoch; default 1); "
        "step[:EVERY,GAMMA] (times GAMMA every EVERY epochs; default 10,0.5).", _lr_schedule,
        metavar="SCHEDULE")
    tensorboard: bool = option(
        bool, False, "Also write TensorBoard event files into RUN/tensorboard: losses, KL per "
        "dimension, active units, learning rate, gradient norm, sample and reconstruction "
        "grids, hyperparameters (tensorboard --logdir RUN).")
    epochs: int | None = option(
        int, None, "Training epochs. Default: 10; for real-valued vectors and tables, enough "
        "for about 3000 SVI steps (10 to 400).", positive_int)
    batch_size: int | None = option(
        int, None, f"Images per SVI step. Default: {DEFAULT_BATCH}, or the whole training set "
        "when it is smaller (a small table).", positive_int)
    lr: float | None = option(float, None, "Adam learning rate. Default: 1e-3; 1e-2 for "
                              "real-valued vectors and tables.", positive)
    seed: int = option(int, 0, "Random seed; runs on CPU are reproducible.", _seed)
    device: str = option(str, "auto", "Where parameters and data live.", choices=DEVICES)
    jit: bool | None = option(
        bool, None, "Compile the objective (with --compiler's compiler). Default: whenever the "
        "run allows it (--elbo trace; --contractive with --compiler inductor only).",
        flag="jit/--no-jit")
    compiler: str = option(
        str, "torchscript", "What compiles the objective with --jit: torchscript (Pyro's "
        "JitTrace_ELBO, torch.jit.trace) or inductor (the ELBO recorded as a torch.fx graph and "
        "compiled by torch.compile for the run's batch size: about 3 s at the first step with "
        "warm caches, 20 s on a fresh machine, faster steps after).",
        choices=COMPILERS)
    precision: str = option(
        str, "float32", "Arithmetic of the training step: float32, or bf16 (the model and guide "
        "under torch.autocast: matrix products in bfloat16; weights, optimiser and every "
        "evaluation in float32; not compiled). Pays on CPUs with bf16 instructions at batches of "
        "512 or more.",
        choices=PRECISIONS)

    def __post_init__(self) -> None:
        if self.jit is not None and not isinstance(self.jit, bool):
            raise ConfigError(f"jit must be true, false or null (automatic), got {self.jit!r}")
        _validate_fields(self)

    def for_data(self, real_vectors: bool, train_size: int) -> dict:
        """The defaults that depend on the data, for the options left unset (None).

        Images: 10 epochs at learning rate 1e-3. Real-valued vectors and tables
        (``real_vectors``) are often small, and their log-scale parameters (posterior and
        noise variances) must travel far: Adam moves a parameter by about the learning rate
        per step, so they train at 1e-2 for about 3000 steps (``train_size`` points in batches
        of ``batch_size``), 10 to 400 epochs. Returns the changes as flat options.
        """
        changes = {}
        if self.lr is None:
            changes["lr"] = 1e-2 if real_vectors else 1e-3
        if self.epochs is None:
            batch = self.batch_size or min(DEFAULT_BATCH, train_size)
            steps = max(1, math.ceil(train_size / batch))
            changes["epochs"] = (min(400, max(10, math.ceil(3000 / steps))) if real_vectors
                                 else 10)
        return changes


def part_option_flags() -> dict[str, list[tuple[type, str]]]:
    """Flat option name (``prior_df``) → the (part class, attribute) pairs that declare it.

    Raises
    ------
    ConfigError
        If a part's option takes the name of an option of the configuration sections.
    """
    taken = {*section_options(DataConfig), *section_options(TrainConfig), *PART_KINDS,
             *section_options(ModelConfig), *MODEL_DECIDED}
    flags: dict[str, list[tuple[type, str]]] = {}
    for registry in PART_KINDS.values():
        for cls in registry.parts.values():
            for attribute in cls.options():
                flat = cls.flag(attribute).replace("-", "_")
                if flat in taken:
                    raise ConfigError(f"the option {attribute!r} of --{cls.kind} {cls.name} "
                                      f"takes the flag --{flat.replace('_', '-')}, which another "
                                      "option has; give it another flag")
                flags.setdefault(flat, []).append((cls, attribute))
    return flags


def _choose(kind: str, name: str, given: dict) -> PartChoice:
    cls = PART_KINDS[kind][name]
    mine = {a: given[cls.flag(a).replace("-", "_")] for a in cls.options()
            if given.get(cls.flag(a).replace("-", "_")) is not None}
    return PartChoice(kind, name, cls.resolve(mine))


def _refuse_unused(chosen: dict[str, str], given: dict) -> None:
    """Part options given for parts that are not chosen are refused, not ignored."""
    for flat, declared in part_option_flags().items():
        if given.get(flat) is None or any(chosen[c.kind] == c.name for c, _ in declared):
            continue
        users: dict[str, list[str]] = {}
        for cls, _ in declared:
            users.setdefault(cls.kind, []).append(cls.name)
        text = " or ".join(f"--{kind} {' or '.join(names)}" for kind, names in users.items())
        raise ConfigError(f"--{flat.replace('_', '-')} applies to {text} only; drop it or "
                          "choose that part")


class Config:
    """A whole run: :attr:`model`, :attr:`data` and :attr:`train`, from flat options.

    Parameters
    ----------
    **options
        Any option of the command line, in Python spelling: ``prior="studentt"``,
        ``prior_df=5.0``, ``hidden=(512, 256)``, ``epochs=3``, ``data_shape=(28, 28)``. Part
        options left out take their part's declared default; given for a part that is not
        chosen, they are refused.

    Raises
    ------
    ConfigError
        On construction, for any invalid value or combination, with a one-line message.
    """

    def __init__(self, **options):
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(section_options(TrainConfig))
                         - set(section_options(DataConfig)) - set(part_option_flags())
                         - set(PART_KINDS) - set(section_options(ModelConfig))
                         - {*MODEL_DECIDED, *DATA_DECIDED})
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; see pyro-vae fit --help")
        self.train = TrainConfig(**section_values(given, TrainConfig))
        self.data = DataConfig(**section_values(given, DataConfig),
                               **{k: given[k] for k in DATA_DECIDED if k in given})
        chosen = {kind: given.get(kind, registry.default) for kind, registry in PART_KINDS.items()}
        own = section_values(given, ModelConfig)
        semi_supervised = self.data.labelled is not None
        if semi_supervised:  # --labelled alone: the class label is the model's condition
            own.setdefault("condition", "label")
        self.model = ModelConfig(
            **own, **{k: given.get(k) for k in MODEL_DECIDED}, semi_supervised=semi_supervised,
            **{kind: _choose(kind, name, given) for kind, name in chosen.items()})
        _refuse_unused(chosen, given)
        self._check()

    @classmethod
    def of(cls, model: ModelConfig, data: DataConfig, train: TrainConfig,
           check: bool = True) -> "Config":
        """A config from its three sections (a user-built model's included); ``check=False``
        skips the combination rules (for a stored run read for its model only)."""
        self = cls.__new__(cls)
        self.model, self.data, self.train = model, data, train
        if check:
            self._check()
        return self

    def options(self) -> dict:
        """The flat options that rebuild this config: every data and training value, z_dim,
        the data shape, the chosen parts and their options that differ from the defaults."""
        flat = {**{k: v for k, v in dataclasses.asdict(self.data).items() if v is not None},
                **{k: v for k, v in dataclasses.asdict(self.train).items() if v is not None},
                **{k: getattr(self.model, k) for k in section_options(ModelConfig)
                   if getattr(self.model, k) is not None},
                **{k: getattr(self.model, k) for k in MODEL_DECIDED}}
        for kind in PART_KINDS:
            choice = getattr(self.model, kind)
            if choice is None:
                continue
            flat[kind] = choice.name
            declared = choice.cls.options()
            flat.update({choice.cls.flag(a).replace("-", "_"): v
                         for a, v in choice.options.items() if v != declared[a].default})
        return flat

    def _check(self) -> None:
        """The combination rules, over capabilities, in a fixed order (first reason wins)."""
        model, train = self.model, self.train
        objective = OBJECTIVES[train.elbo]
        family = model.guide.cls if model.guide is not None else None
        if family is not None and objective.needs_density and not family.has_density:
            raise ConfigError(
                f"--elbo {train.elbo} needs a guide with a density to importance-sample from, "
                f"and a point mass (--guide {family.name}) has none; use --guide "
                f"{_names(FAMILIES, 'has_density')}, or --elbo trace")
        if family is not None and objective.needs_gaussian_guide and not family.gaussian:
            raise ConfigError(
                f"--elbo {train.elbo} {objective.gaussian_reason} for a diagonal Gaussian "
                f"guide, not --guide {family.name}; use --guide "
                f"{_names(FAMILIES, 'gaussian')}, or --elbo {objective.fallback}")
        model.check()
        prior = model.prior.cls if model.prior is not None else None
        if prior is not None and objective.needs_factorised_prior and not prior.factorised:
            raise ConfigError(
                f"--elbo {train.elbo} splits the KL term into one per latent dimension, which "
                f"needs a prior that factorises; use --prior {_names(PRIORS, 'factorised')}")
        if model.latent_layers > 1 and (objective.one_latent_site or objective.analytic_kl):
            raise ConfigError(
                f"--elbo {train.elbo} {objective.one_site_reason}, and --latent-layers "
                f"{model.latent_layers} has one site per layer; use --elbo "
                f"{objective.layers_fallback}")
        if model.latent_layers > 1 and objective.replays_layers and train.corrupt:
            raise ConfigError(
                f"--elbo {train.elbo} runs the guide of --latent-layers {model.latent_layers} a "
                "second time at the same draws, and --corrupt would draw another x̃ there; drop "
                f"--corrupt or use --elbo {objective.layers_fallback}")
        least, why = objective.min_particles
        if train.particles < least:
            raise ConfigError(f"--elbo {train.elbo} {why}; give --particles K ≥ {least} (e.g. 5) "
                              "or use --elbo trace")
        if family is not None and family.point_mass and train.particles > 1:
            raise ConfigError("a point-mass guide draws the same code every time, so "
                              "--particles > 1 only repeats work; drop --particles")
        if not objective.has_kl_term and (train.beta != 1.0 or train.kl_warmup > 0):
            raise ConfigError(
                f"--beta and --kl-warmup reweight the KL term of the ELBO, which --elbo "
                f"{train.elbo} does not have; use them with --elbo "
                f"{_names(OBJECTIVES, 'has_kl_term')}")
        self._check_kl_options()
        if self.data.binarize is not None and not model.likelihood.cls.binary:
            raise ConfigError(
                f"--binarize applies to the {_names(LIKELIHOODS, 'binary')} likelihood only, not "
                f"{model.likelihood.name!r}; drop --binarize or use --likelihood "
                f"{_names(LIKELIHOODS, 'binary')}")
        self._check_labels()

    def _check_kl_options(self) -> None:
        """The rules of the KL schedule and free bits."""
        model, train = self.model, self.train
        objective = OBJECTIVES[train.elbo]
        given = [flag for flag, value in (("--kl-schedule", train.kl_schedule),
                                          ("--free-bits", train.free_bits)) if value]
        if given and not objective.has_kl_term:
            raise ConfigError(
                f"{' and '.join(given)} act on the KL term of the ELBO, which --elbo "
                f"{train.elbo} does not have; use --elbo {_names(OBJECTIVES, 'has_kl_term')}")
        if train.kl_schedule is not None and train.kl_warmup:
            raise ConfigError("--kl-schedule and --kl-warmup both set the KL weight; give one "
                              "(a warm-up is cyclical:1,R with R = warm-up epochs / epochs)")
        if not train.free_bits:
            return
        if objective.own_beta:
            raise ConfigError(f"--free-bits and --elbo {train.elbo} both reshape the KL term; "
                              "give one")
        family = model.guide.cls if model.guide is not None else None
        prior = model.prior.cls if model.prior is not None else None
        if (family is not None and not family.gaussian) or (prior is not None and
                                                            not prior.factorised):
            raise ConfigError(
                "--free-bits splits the KL term into one per latent dimension, which needs a "
                f"diagonal Gaussian guide (--guide {_names(FAMILIES, 'gaussian')}) and a prior "
                f"that factorises (--prior {_names(PRIORS, 'factorised')})")
        if model.semi_supervised:
            raise ConfigError("--free-bits is not defined where the class is summed out "
                              "(--labelled); drop one")

    def _check_labels(self) -> None:
        """The rules of conditional and semi-supervised models."""
        model, train, data = self.model, self.train, self.data
        if model.covariates is not None and data.dataset != IN_MEMORY and \
                not is_table_file(data.dataset):
            raise ConfigError(f"--condition {model.condition} names table columns, but "
                              f"{data.dataset} is not a .csv or .parquet table; use --condition "
                              "label to condition on the class label")
        if model.semi_supervised != (data.labelled is not None):  # a model of the user's
            raise ConfigError("a model with a classifier q(y|x) is trained with --labelled N "
                              "(or all)" if model.semi_supervised else "--labelled needs a "
                              "model with a classifier: build the VAE with classifier=...")
        if not model.semi_supervised:
            if train.classifier_weight is not None:
                raise ConfigError("--classifier-weight weights the classifier q(y|x) of the "
                                  "semi-supervised model; give it with --labelled N")
            if train.labelled_passes is not None:
                raise ConfigError("--labelled-passes spreads the labelled images of the "
                                  "semi-supervised model; give it with --labelled N")
            return
        if not OBJECTIVES[train.elbo].enumerates:
            raise ConfigError(
                f"--labelled sums the unknown class out exactly (TraceEnum_ELBO), which --elbo "
                f"{train.elbo} has no form of; use --elbo {_names(OBJECTIVES, 'enumerates')}")
        if train.contractive:
            raise ConfigError("--contractive penalises the encoder's Jacobian, which is not "
                              "defined where the class is summed out (--labelled); drop one")
        if data.labelled == "all" and train.classifier_weight == 0:
            raise ConfigError("with --labelled all the classifier q(y|x) learns only from the "
                              "classification term; give --classifier-weight > 0")

    def __getattr__(self, name: str) -> Any:
        """Flat read access in the options' own names: ``config.epochs``, ``config.prior``
        (the prior's name), ``config.prior_df`` (its value, None when no chosen part has it)."""
        if name.startswith("_") or name in ("model", "data", "train"):
            raise AttributeError(name)
        for section in (self.train, self.data, self.model):
            if name in {f.name for f in dataclasses.fields(section)}:
                value = getattr(section, name)
                return value.name if isinstance(value, PartChoice) else value
        for cls, attribute in part_option_flags().get(name, []):
            choice = getattr(self.model, cls.kind)
            if choice is not None and choice.name == cls.name:
                return choice.options[attribute]
        if name in part_option_flags():
            return None
        raise AttributeError(name)

    @property
    def binarization(self) -> str | None:
        """The binarisation in effect: ``binarize``, ``"dynamic"`` by default for likelihoods
        of binary data, ``None`` for the others."""
        if not self.model.likelihood.cls.binary:
            return None
        return self.data.binarize or "dynamic"

    @property
    def input_dim(self) -> int:
        """D, as :attr:`ModelConfig.input_dim`."""
        return self.model.input_dim

    @property
    def binarizes(self) -> bool:
        """Whether grey levels are binarised (dynamically or statically) for the likelihood."""
        return self.binarization in ("dynamic", "static")

    def replace(self, **changes) -> "Config":
        """A copy with ``changes`` (flat options) applied and validated again.

        Raises
        ------
        ConfigError
            For invalid values, or a change of the parts of a user-built model (which are the
            user's code).
        """
        if not self.model.user_built:
            return Config(**{**self.options(), **changes})
        model_changes = {k: v for k, v in changes.items()
                         if k not in section_options(DataConfig)
                         and k not in section_options(TrainConfig)}
        model_changes = {k: v for k, v in model_changes.items() if k not in DATA_DECIDED}
        if set(model_changes) - {*section_options(ModelConfig), *MODEL_DECIDED}:
            raise ConfigError(f"option {sorted(model_changes)[0]!r} describes a built-in model; "
                              "a VAE you built brings its own networks and parts")
        return Config.of(dataclasses.replace(self.model, **model_changes),
                         dataclasses.replace(self.data, **section_values(changes, DataConfig),
                                             **{k: v for k, v in changes.items()
                                                if k in DATA_DECIDED}),
                         dataclasses.replace(self.train, **section_values(changes, TrainConfig)))

    def for_data(self, data_shape: tuple[int, ...], train_size: int) -> "Config":
        """This config completed by its data, as :func:`pyro_vae.fit` completes it: the shape
        of one data point, and where left unset (None) the values the data decide: whether the
        model standardises (:attr:`ModelConfig.standardizes`), the batch size
        (:data:`DEFAULT_BATCH`, or all ``train_size`` training points when they are fewer), the
        learning rate and the epochs (:meth:`TrainConfig.for_data`).

        Raises
        ------
        ConfigError
            If the data shape does not suit the model (e.g. ``--arch conv``).
        """
        config = self.replace(data_shape=tuple(data_shape))
        changes = config.train.for_data(config.model.real_vectors, train_size)
        if config.train.batch_size is None:
            changes["batch_size"] = max(1, min(DEFAULT_BATCH, train_size))
        if config.model.standardize is None and not config.model.user_built:
            changes["standardize"] = config.model.standardizes
        if config.model.semi_supervised and config.train.classifier_weight is None:
            changes["classifier_weight"] = DEFAULT_CLASSIFIER_WEIGHT
        return config.replace(**changes) if changes else config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Config({self.model!r}, {self.data!r}, {self.train!r})"

    def to_dict(self) -> dict:
        """JSON-ready dictionary, with the format marker and version."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "training": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, payload: object, *, model_only: bool = False) -> "Config":
        """Rebuild a config written by :meth:`to_dict` (format 2) or by the first release
        (format 1, one flat table).

        With ``model_only``, the training section is read as written, without validation and
        without the rules that combine it with the model: a run is loaded for its model (and
        data), whatever its training options say.

        Raises
        ------
        CheckpointError
            If ``payload`` is not a pyro_vae config, comes from a newer format, has unknown
            keys, lacks ``data_shape``, or holds invalid values.
        """
        version = _check_header(payload)
        try:
            if version == 1:
                return _from_v1(payload["config"])
            return _from_v2(payload, model_only)
        except (ConfigError, TypeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"config.json holds an invalid value: {err}") from None


def section_values(options: dict, section) -> dict:
    """The entries of the flat ``options`` that belong to the dataclass ``section``."""
    return {k: v for k, v in options.items() if k in section_options(section)}


def _check_header(payload: object) -> int:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("config.json is not a pyro_vae run configuration; "
                              "point to a folder written by 'pyro-vae fit'")
    version = payload.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(
            f"config.json has format version {version!r} but this pyro_vae reads versions 1 to "
            f"{FORMAT_VERSION}; install the version that wrote it")
    return version


def _from_v1(body: object) -> Config:
    """Format 1: one flat table of every option (the first release)."""
    if not isinstance(body, dict):
        raise CheckpointError("config.json has no 'config' table; the file is damaged")
    unknown = sorted(set(body) - _V1_KEYS)
    if unknown:
        raise CheckpointError(f"config.json has unknown keys {unknown}; it was written by "
                              "another pyro_vae version: install that version or retrain")
    if body.get("data_shape") is None:
        raise CheckpointError("config.json lacks data_shape; the file is damaged, retrain")
    if not isinstance(body.get("hidden", []), list):
        raise CheckpointError("config.json: 'hidden' must be a list of layer widths")
    options = {**body, "standardize": False}  # format 1 did not standardise
    if options.get("arch") == "linear":  # format 1 stored the unused defaults of linear nets
        options.pop("hidden", None), options.pop("activation", None)
    return Config(**options)


#: The keys of a format-1 ``config.json``.
_V1_KEYS = frozenset(
    "dataset test_dataset data_dir limit binarize z_dim hidden activation prior prior_scale "
    "prior_df prior_components flows likelihood obs_scale min_obs_scale guide arch corrupt "
    "contractive elbo particles beta kl_warmup clip_norm skip_nonfinite checkpoint_every epochs "
    "batch_size lr seed device jit data_shape".split())


def _part_from_dict(kind: str, body: object) -> PartChoice | None:
    if body is None:
        return None
    if not isinstance(body, dict) or "name" not in body:
        raise CheckpointError(f"config.json: model.{kind} must be a table with a name")
    options = {k: v for k, v in body.items() if k != "name"}
    cls = PART_KINDS[kind][body["name"]]
    return PartChoice(kind, body["name"], cls.resolve(options))


_V2_KEYS = {"model": {*section_options(ModelConfig), *MODEL_DECIDED, "semi_supervised",
                      "user_built", *PART_KINDS},
            "data": {*section_options(DataConfig), *DATA_DECIDED}, "training": set(section_options(TrainConfig))}


def _from_v2(payload: dict, model_only: bool) -> Config:
    for section, known in _V2_KEYS.items():
        unknown = sorted(set(payload.get(section) or {}) - known)
        if unknown:
            raise CheckpointError(f"config.json has unknown keys {unknown} in {section}; it was "
                                  "written by another pyro_vae version: install that version")
    body = payload.get("model")
    if not isinstance(body, dict) or body.get("data_shape") is None:
        raise CheckpointError("config.json lacks model.data_shape; the file is damaged, retrain")
    # Runs written before --standardize existed did not standardise.
    own = {"standardize": False, **section_values(body, ModelConfig)}
    model = ModelConfig(**own, **{k: body.get(k) for k in MODEL_DECIDED},
                        semi_supervised=body.get("semi_supervised", False),
                        user_built=bool(body.get("user_built", False)),
                        **{kind: _part_from_dict(kind, body.get(kind)) for kind in PART_KINDS})
    model.check()
    data = DataConfig(**payload.get("data", {}))
    training = payload.get("training", {})
    if model_only:
        train = TrainConfig.__new__(TrainConfig)  # kept as written, not validated
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for name, value in {**defaults, **training}.items():
            object.__setattr__(train, name, value)
        return Config.of(model, data, train, check=False)
    config = Config.of(model, data, TrainConfig(**training))
    return config if model.user_built else Config(**config.options())
