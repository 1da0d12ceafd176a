"""Datasets: held in memory, or streamed from a memory-mapped ``.npy`` file.

Named image datasets (Fashion-MNIST, MNIST, KMNIST) come through torchvision; a user's own data
come as ``.npy`` (one array) or ``.npz`` (``x_train`` and optional ``x_test``, Keras's
``mnist.npz`` convention), shaped (N, H, W) or (N, D), as uint8 grey levels 0–255 or floats, or
as a ``.csv``/``.parquet`` table read with pandas (numeric columns are the features, an optional
``--label-column`` holds class labels). Everything is flattened to (N, D) rows.

Rows are *stored* compactly and converted to float32 batch by batch on the training device
(:func:`as_float`): grey levels as uint8 (k stands for k/255; 4× less memory than float32),
binary data (integer arrays holding only 0 and 1) and binarised draws as bool, everything else
(floats, table values, and integers for a count likelihood, ``counts`` capability: poisson,
negbinomial, zinb, binomial) as float32 values. :attr:`Data.train` and :attr:`Data.test` give the
float32 values; :attr:`Data.train_rows` and :attr:`Data.test_rows` what is stored. A ``.npy``
file larger than half the available memory, or any ``.npy`` with ``--stream``, is not read at
all: its training rows stay in the file and are read batch by batch (:mod:`.stream`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..config import Config, DataConfig, data_unit, is_table_file
from ..errors import DataError
from .folders import class_names as folder_class_names
from .folders import read_folder
from .stream import MappedRows, open_npy, should_stream

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
#: torchvision's download root when ``--data-dir`` is not given.
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro_vae"
#: Fixed seed for binarising held-out data, so every run is scored on the same binary images.
TEST_BINARIZE_SEED = 0
#: Seed of the 10% hold-out split, fixed so the test set does not depend on ``--seed``.
HOLDOUT_SEED = 0
HOLDOUT_FRACTION = 0.1
#: Seed of the validation split of the training rows, fixed so that it does not depend on
#: ``--seed`` either, and its share when a run needs a validation set and names none.
VALIDATION_SEED = 1
VALIDATION_FRACTION = 0.1

_TORCHVISION_CLASS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
#: Datasets generated on demand (:mod:`pyro_vae.io.shapes`), with known generative factors.
GENERATED = ("shapes",)
NAMED_DATASETS = (*_TORCHVISION_CLASS, *GENERATED)
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class Data:
    """A train/test split: rows stored compactly, read as float32 values.

    Parameters
    ----------
    train, test : Tensor or MappedRows
        (N, D) and (M, D) rows, stored as uint8 grey levels (k for k/255), bool 0/1 values or
        float32 values (a float tensor of yours is used as it is), or for training data
        streamed from a file a :class:`~pyro_vae.io.stream.MappedRows`.
    data_shape : tuple of int
        Shape of one data point before flattening, (28, 28) for MNIST-like images.
    train_labels, test_labels : Tensor or None
        (N,) and (M,) int64 class labels when the dataset has them.
    source : str
        Where the data came from, for messages.
    columns, classes : tuple of str, optional
        A table's numeric column names, in order, and the names of its label classes (label
        k is ``classes[k]``) when the label column holds names.
    train_covariates, test_covariates : Tensor or None
        (N, C) and (M, C) float32 covariates of a model conditioned on table columns
        (:func:`split_covariates`), taken out of the rows.
    valid, valid_labels, valid_covariates : optional
        A validation set of V rows, as the test set: held out of the training rows
        (:func:`split_validation`) or read from ``--validation-dataset``; None without one.
    dataset : str, optional
        The named dataset (``fashion-mnist``, ``shapes``, …) the rows were read as, which
        :func:`load_data` reads again; None for files and data built in memory.

    The training labels of a semi-supervised run hold −1 for the images without a label: as
    the data came, or hidden by :func:`hide_labels`.
    """

    def __init__(self, train, test, data_shape: tuple[int, ...],
                 train_labels: torch.Tensor | None = None,
                 test_labels: torch.Tensor | None = None, source: str = "",
                 columns: tuple[str, ...] | None = None,
                 classes: tuple[str, ...] | None = None,
                 train_covariates: torch.Tensor | None = None,
                 test_covariates: torch.Tensor | None = None, valid=None,
                 valid_labels: torch.Tensor | None = None,
                 valid_covariates: torch.Tensor | None = None, dataset: str | None = None):
        self.train_rows, self.test_rows, self.valid_rows = train, test, valid
        self.dataset = dataset
        self.valid_labels, self.valid_covariates = valid_labels, valid_covariates
        self.data_shape = tuple(data_shape)
        self.train_labels, self.test_labels, self.source = train_labels, test_labels, source
        self.columns, self.classes = columns, classes
        self.train_covariates, self.test_covariates = train_covariates, test_covariates

    @property
    def train(self) -> torch.Tensor:
        """(N, D) float32 training data: grey levels in [0, 1] for image data, counts as they
        are for a count likelihood, table values as they are (read into memory when streamed)."""
        return as_float(self.train_rows)

    @property
    def test(self) -> torch.Tensor:
        """(M, D) float32 test data, as :attr:`train`."""
        return as_float(self.test_rows)

    @property
    def streamed(self) -> bool:
        """Whether the training rows are read from a file batch by batch."""
        return isinstance(self.train_rows, MappedRows)

    def replace(self, **changes) -> "Data":
        """A copy with the given attributes (``train``, ``test``, ``train_labels`` …) changed."""
        fields = {"train": self.train_rows, "test": self.test_rows, "data_shape": self.data_shape,
                  "train_labels": self.train_labels, "test_labels": self.test_labels,
                  "source": self.source, "columns": self.columns, "classes": self.classes,
                  "train_covariates": self.train_covariates,
                  "test_covariates": self.test_covariates, "valid": self.valid_rows,
                  "valid_labels": self.valid_labels, "valid_covariates": self.valid_covariates,
                  "dataset": self.dataset}
        return Data(**{**fields, **changes})

    def conditions(self, condition: str | None, test: bool = False,
                   split: str | None = None) -> torch.Tensor | None:
        """What a model conditioned on ``condition`` (``"label"``, table columns, or None)
        reads beside the rows of ``split`` (``"train"``, ``"test"`` or ``"valid"``; ``test``
        is ``split="test"``): labels (N,) int64, covariates (N, C), or None."""
        split = split or ("test" if test else "train")
        if condition is None:
            return None
        if condition == "label":
            return getattr(self, f"{split}_labels")
        return getattr(self, f"{split}_covariates")

    def __repr__(self) -> str:
        valid = (f", {self.valid_rows.shape[0]} validation" if self.valid_rows is not None
                 else "")
        return (f"Data({self.train_rows.shape[0]} training{valid} and {self.test_rows.shape[0]} test "
                f"points of shape {self.data_shape} from {self.source or 'memory'})")

    @property
    def is_image(self) -> bool:
        """Whether one data point is an (H, W) grey or (C, H, W) colour image, so that it can
        be drawn."""
        return data_unit(self.data_shape) == "image"


def as_float(x) -> torch.Tensor:
    """Stored rows → float32 values on the same device: uint8 grey levels k → k/255, bool →
    0.0/1.0, float tensors as they are (the same tensor); a
    :class:`~pyro_vae.io.stream.MappedRows` is read into memory first."""
    if isinstance(x, MappedRows):
        x = x.gather()
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.bool:
        return x.float()
    return x


def store(x: np.ndarray, kind: str) -> torch.Tensor:
    """(N, …) array → (N, D) stored rows of ``kind``: ``levels`` (uint8), ``binary`` (bool) or
    ``values`` (float32)."""
    flat = x if x.ndim == 2 else x.reshape(x.shape[0], -1)
    if kind == "levels":
        return torch.from_numpy(np.ascontiguousarray(flat, dtype=np.uint8))
    if kind == "binary":
        return torch.from_numpy(np.ascontiguousarray(flat != 0))
    return torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))


def chunks(x, elements: int = 1 << 22):
    """Stored rows (a tensor or :class:`~pyro_vae.io.stream.MappedRows`) in consecutive
    chunks of about ``elements`` values each, so that only one chunk is float at a time."""
    if isinstance(x, MappedRows):
        yield from x.chunks()
        return
    yield from x.split(max(1, elements // max(1, x.shape[1]))) if x.shape[0] else [x]


def sample_rows(x, values: int = 1 << 22) -> torch.Tensor:
    """Evenly spaced rows of stored data, at most ``values`` values (16 MB) in all, as float32
    (all rows of float data held in memory): what is estimated from the data before training
    (:meth:`VAE.adapt`: means, scales, library sizes) without a float copy of a large set."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    limit = max(1, values // max(1, x.shape[1]))
    return as_float(x[:: max(1, math.ceil(x.shape[0] / limit))])


def binarize_rows(x, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per value of stored rows (N, D) → (N, D) bool, chunk by chunk. On the
    CPU these are exactly the draws of ``binarize(as_float(x))``: torch draws element by element
    in order, so chunking does not change them."""
    out = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    start = 0
    for chunk in chunks(x):
        out[start : start + chunk.shape[0]] = torch.bernoulli(as_float(chunk), generator=generator)
        start += chunk.shape[0]
    return out


def draw_binary(x, generator: torch.Generator | None = None) -> torch.Tensor:
    """The dynamic binarisation draw of stored rows (N, D) → (N, D) bool, the same Bernoulli
    distribution as :func:`binarize_rows` (grey level k/255 → 1 with probability k/255) at
    about a fifth of its cost: torch's Bernoulli kernel draws one double per value, about 9 ns
    each on this CPU, a sixth of a training epoch of Fashion-MNIST.

    uint8 levels k: one integer U uniform on 0..254 per value, and 1 where U < k, so that
    P(1) = k/255 exactly (0 never, 255 always). Float probabilities p: one float32 U uniform on
    [0, 1) and 1 where U < p (p to 2^-24). Binary rows are returned as they are. The draws
    are the same in any chunking. Used for the per-epoch training draw; the fixed test draw
    and ``--binarize static`` keep :func:`binarize_rows`, so their images stay those of
    earlier releases.
    """
    if x.dtype == torch.bool:
        return x
    out = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    start = 0
    for chunk in chunks(x):
        stop = start + chunk.shape[0]
        if chunk.dtype == torch.uint8:
            uniform = torch.empty_like(chunk).random_(0, 255, generator=generator)
        else:
            uniform = torch.rand(chunk.shape, generator=generator, device=chunk.device)
        torch.lt(uniform, chunk, out=out[start:stop])
        start = stop
    return out


def load_data(config: Config) -> Data:
    """Load, validate and split the data that ``config`` names.

    Returns
    -------
    Data
        Training images (the first ``config.limit`` if set) and test images.

    Raises
    ------
    DataError
        Missing or unreadable files, unknown dataset names, wrong shapes or dtypes, NaN or
        infinite values, values outside the likelihood's support, or fewer training images
        than one batch.
    """
    return prepare_data(read_validation(read_data(config.data, counts=_counts(config)),
                                        config), config)


def _counts(config: Config) -> bool:
    return config.model.likelihood.cls.counts


def read_data(source: DataConfig, counts: bool = False) -> Data:
    """The train/test split that ``source`` names (its dataset, test file and data folder),
    read and shaped but not checked against a model; ``source.limit`` is not applied. With
    ``counts``, integer data keep their values (for a count likelihood) instead of being read
    as grey levels.

    Raises
    ------
    DataError
        Missing or unreadable files, unknown dataset names, wrong shapes or dtypes.
    """
    name = source.dataset
    if name in NAMED_DATASETS:
        if source.stream:
            raise DataError(f"--stream reads .npy files only, not the named dataset {name}; "
                            "drop --stream")
        data = _load_named(name, source.data_dir, counts)
    elif name.lower().endswith(_SUFFIXES) or os.path.exists(name):
        data = _load_file(name, source, counts, holdout=source.test_dataset is None)
    else:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(NAMED_DATASETS)}, a folder of "
            "images, or the path of a .npy/.npz/.csv/.parquet file (a run trained on data "
            "given in memory needs them given again: --dataset, or data=)"
        )
    if source.test_dataset is not None:  # a test table is read with the training one's names
        source = dataclasses.replace(source, columns=source.columns or data.columns,
                                     classes=source.classes or data.classes)
        test, test_labels, test_shape = _read_test_file(source.test_dataset, source, counts)
        if test_shape != data.data_shape:
            raise DataError(
                f"{source.test_dataset} holds data of shape {test_shape} but the training data "
                f"have shape {data.data_shape}; give a test file matching the training data"
            )
        data.test_rows, data.test_labels = test, test_labels
    return data


def read_validation(data: Data, config: Config) -> Data:
    """``data`` with the validation set of ``--validation-dataset`` (a .npy, a .npz's
    ``x_test`` or ``x_train``, or a table read by the training table's column names), if the
    run names one.

    Raises
    ------
    DataError
        If the file cannot be read or holds data of another shape than the training data.
    """
    path = config.data.validation_dataset
    if path is None:
        return data
    source = dataclasses.replace(config.data, columns=config.data.columns or data.columns,
                                 classes=config.data.classes or data.classes)
    rows, labels, shape = _read_test_file(path, source, _counts(config))
    if shape != data.data_shape:
        raise DataError(f"{path} holds data of shape {shape} but the training data have shape "
                        f"{data.data_shape}; give a validation file matching the training data")
    return data.replace(valid=rows, valid_labels=labels)


def validation_share(config: Config) -> float:
    """The share of the training rows to hold out for validation: ``--validation-fraction``;
    by default :data:`VALIDATION_FRACTION` when ``--early-stopping`` or ``--lr-schedule
    plateau`` needs a validation set, else 0; 0 when ``--validation-dataset`` is given."""
    from ..training.lr_schedule import parse_lr_schedule

    if config.data.validation_dataset is not None:
        return 0.0
    if config.data.validation_fraction is not None:
        return float(config.data.validation_fraction)
    needed = (config.train.early_stopping is not None
              or parse_lr_schedule(config.train.lr_schedule).needs_validation)
    return VALIDATION_FRACTION if needed else 0.0


def split_validation(data: Data, fraction: float) -> Data:
    """``data`` with a seeded share ``fraction`` of its training rows (at least one) moved to
    its validation set, labels and covariates with them; the same rows whatever ``--seed``
    (:data:`VALIDATION_SEED`), both parts in their original order. Streamed rows stay in their
    file.

    Raises
    ------
    DataError
        If no training row would be left.
    """
    n = data.train_rows.shape[0]
    n_valid = max(1, math.ceil(fraction * n))
    if n_valid >= n:
        raise DataError(f"--validation-fraction {fraction} of {n} training "
                        f"{data_unit(data.data_shape)}s leaves none to train on; give a smaller "
                        "share or more data")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    train_idx, valid_idx = perm[n_valid:].sort().values, perm[:n_valid].sort().values

    def pick(t, index):
        if t is None:
            return None
        return t.subset(index.numpy()) if isinstance(t, MappedRows) else t[index]

    return data.replace(
        train=pick(data.train_rows, train_idx), valid=pick(data.train_rows, valid_idx),
        train_labels=pick(data.train_labels, train_idx),
        valid_labels=pick(data.train_labels, valid_idx),
        train_covariates=pick(data.train_covariates, train_idx),
        valid_covariates=pick(data.train_covariates, valid_idx))


def prepare_data(data: Data, config: Config) -> Data:
    """Take a table's covariate columns out of the features (``--condition NAMES``,
    :func:`split_covariates`), apply ``config.limit`` to ``data``, hold out the validation
    share of its training rows (:func:`validation_share`, :func:`split_validation`) and check
    it with :func:`check_data` and :func:`check_labels`.

    Returns a new :class:`Data`; ``data`` itself is left as it was.

    Raises
    ------
    DataError
        As :func:`split_covariates`, :func:`check_data` and :func:`check_labels`.
    """
    if config.model.covariates is not None:
        data = split_covariates(data, config.model.covariates)
    if config.limit is not None:
        def first(t):
            return t[: config.limit] if t is not None else None
        data = data.replace(train=data.train_rows[: config.limit],
                            train_labels=first(data.train_labels),
                            train_covariates=first(data.train_covariates))
    share = validation_share(config)
    if share and data.valid_rows is None:
        data = split_validation(data, share)
    check_data(data, config)
    check_labels(data, config)
    return data


def split_covariates(data: Data, names: tuple[str, ...]) -> Data:
    """The table columns ``names`` taken out of the rows of ``data`` as covariates
    (:attr:`Data.train_covariates`, (N, C) float32), the other columns left as the features.

    Raises
    ------
    DataError
        For data that are not a table, a name that is not one of its numeric columns, or no
        feature column left.
    """
    if data.columns is None:
        raise DataError(f"--condition {','.join(names)} names table columns, but "
                        f"{data.source or 'the data'} is not a table; use --condition label")
    missing = [n for n in names if n not in data.columns]
    if missing:
        raise DataError(f"{data.source} has no numeric column {missing[0]!r} to condition on; "
                        f"its numeric columns are {', '.join(data.columns[:20])}")
    taken = [data.columns.index(n) for n in names]
    kept = [i for i in range(len(data.columns)) if i not in taken]
    if not kept:
        raise DataError(f"--condition takes every column of {data.source} out of the "
                        "features; leave some columns to model")
    valid = data.valid_rows
    for rows in (data.train_rows, data.test_rows, *([valid] if valid is not None else [])):
        finite = torch.isfinite(as_float(rows[:, taken])).all(0)
        if not bool(finite.all()):
            name = names[int((~finite).nonzero()[0])]
            raise DataError(f"{data.source}: the covariate column {name!r} holds NaN or "
                            "infinite values; fix or drop those rows")
    return data.replace(
        train=data.train_rows[:, kept], test=data.test_rows[:, kept], data_shape=(len(kept),),
        train_covariates=data.train_rows[:, taken], test_covariates=data.test_rows[:, taken],
        valid=None if valid is None else valid[:, kept],
        valid_covariates=None if valid is None else valid[:, taken])


def num_classes(data: Data) -> int:
    """K, the number of classes of ``data``'s labels: the class names' count where the labels
    number names (a table's label column), else the largest training label plus one."""
    if data.classes is not None:
        return len(data.classes)
    return int(data.train_labels.max()) + 1 if data.train_labels.numel() else 0


def check_labels(data: Data, config: Config) -> None:
    """Raise :class:`DataError` if a model conditioned on the class label cannot read the
    labels of ``data``: none for the training images or for the test images, a negative
    label, fewer than two classes, or test labels outside the training classes 0 … K−1. For
    the semi-supervised model (``--labelled``) a training label of −1 marks an image without
    one (at least one image must have a label)."""
    if config.model.condition != "label":
        return
    model = "--labelled" if config.model.semi_supervised else "--condition label"
    if data.train_labels is None:
        raise DataError(
            f"{model} needs class labels, and {data.source or 'the data'} has none; give "
            "y_train in a .npz, one subfolder per class, --label-column for a table, or a "
            "named dataset")
    if data.test_labels is None and data.test_rows.shape[0]:
        raise DataError(
            f"{model} needs the test images' labels too, and {data.source or 'the data'} has "
            "none for them; give y_test with x_test in a .npz (or leave both out to hold out "
            "labelled training images)")
    semi = config.model.semi_supervised  # −1 marks a training image without a label
    valid = data.valid_rows
    if data.valid_labels is None and valid is not None and valid.shape[0] and not semi:
        raise DataError(
            f"{model} needs the validation images' labels too, and "
            f"{config.data.validation_dataset or 'the validation set'} has none for them; give "
            "y_test with x_test (or y_train with x_train) in the validation .npz")
    for labels in (data.train_labels, data.test_labels, data.valid_labels):
        if labels is not None and labels.dtype != torch.int64:
            raise DataError(f"the labels of {data.source or 'the data'} are {labels.dtype}; "
                            "give int64 class numbers 0 … K−1")
    if semi and data.train_labels.numel() and not bool((data.train_labels != -1).any()):
        raise DataError(f"--labelled needs some labels, and every training label of "
                        f"{data.source or 'the data'} is −1 (none); label some images")
    k = config.model.num_classes or num_classes(data)
    for labels, split in ((data.train_labels, "training"), (data.test_labels, "test"),
                          (data.valid_labels, "validation")):
        if semi and split in ("training", "validation") and labels is not None:
            labels = labels[labels != -1]
        if labels is None or not labels.numel():
            continue
        low, high = int(labels.min()), int(labels.max())
        if semi and split == "test" and low == -1:
            raise DataError(f"the test images of {data.source} need every label, for the test "
                            "accuracy, and some are −1 (none); give x_test and y_test with "
                            "every test image labelled")
        if low < 0 or high >= k:
            unknown = " (−1 marks a training image without a label)" if semi else ""
            if not semi and split == "training" and low == -1:
                unknown = ("; for images without a label (−1), --labelled all sums their class "
                           "out")
            source = (config.data.validation_dataset or data.source) if split == "validation" \
                else data.source
            raise DataError(f"the {split} labels of {source} run from {low} to {high}, "
                            f"outside the classes 0 to {k - 1}; number the classes 0 … "
                            f"K−1{unknown}")
    if k < 2:
        raise DataError(f"{model} needs at least two classes; {data.source} has {k}")


def hide_labels(data: Data, keep: int | None, seed: int, classes: int) -> Data:
    """The training labels of ``data`` with all but ``keep`` of them hidden (set to −1): as
    many of each of the ``classes`` classes (the first ``keep`` mod K classes one more), drawn
    with a generator seeded by ``seed`` from the images that have a label (those already −1
    stay so); ``keep`` None keeps them all. The labels must lie in 0 … K−1, or be −1, already
    (:func:`check_labels`).

    Raises
    ------
    DataError
        If ``keep`` is below the number of classes or above the labels available, or a class
        has fewer images than its share.
    """
    labels = data.train_labels
    if keep is None:
        return data
    if keep < classes:
        raise DataError(f"--labelled {keep} is fewer than the {classes} classes; keep at least "
                        "one label of each class")
    known = int((labels >= 0).sum())
    if keep > known:
        raise DataError(f"--labelled {keep} is more than the {known} training labels; "
                        "give at most that, or --labelled all")
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for k in range(classes):
        share = keep // classes + (k < keep % classes)
        members = torch.nonzero(labels == k).flatten()
        if members.shape[0] < share:
            raise DataError(f"--labelled {keep} takes {share} labels of class {k}, which has "
                            f"only {members.shape[0]} training images; give fewer labels")
        kept.append(members[torch.randperm(members.shape[0], generator=generator)[:share]])
    hidden = torch.full_like(labels, -1)
    index = torch.cat(kept)
    hidden[index] = labels[index]
    return data.replace(train_labels=hidden)


def check_data(data: Data, config: Config) -> None:
    """Raise :class:`DataError` if ``data`` cannot be used to train the model ``config`` names."""
    check_values(data.train_rows, f"the training data from {data.source}", config)
    check_values(data.test_rows, f"the test data from {data.source}", config)
    if data.valid_rows is not None:
        check_values(data.valid_rows, "the validation data from "
                     f"{config.data.validation_dataset or data.source}", config)
    if config.batch_size is not None and data.train_rows.shape[0] < config.batch_size:
        raise DataError(
            f"only {data.train_rows.shape[0]} training {data_unit(data.data_shape)}s but "
            f"--batch-size is "
            f"{config.batch_size}; lower --batch-size or give more data"
        )


def check_values(x, what: str, config: Config) -> None:
    """Raise :class:`DataError` if the rows ``x`` (N, D; stored, see :class:`Data`) are empty,
    non-finite, or outside the support of the likelihood ``config`` names. Checked chunk by
    chunk, so streamed data are read once and never held whole."""
    if x.shape[0] == 0:
        raise DataError(f"{what} are empty; give at least one image")
    likelihood = config.model.likelihood.build()
    for chunk in chunks(x):
        chunk = as_float(chunk)
        if not bool(torch.isfinite(chunk).all()):
            raise DataError(f"{what} contain NaN or infinite values; remove or impute them "
                            "first")
        likelihood.check_support(chunk, what, config.binarization)


class EvalData(NamedTuple):
    """Held-out data for a trained model: ``x`` (N, D) float32 as the model scores them,
    ``labels`` (N,) or None, ``covariates`` (N, C) for a model conditioned on table columns
    (else None), and ``source``, a description."""

    x: torch.Tensor
    labels: torch.Tensor | None
    covariates: torch.Tensor | None
    source: str

    def conditions(self, condition: str | None) -> torch.Tensor | None:
        """What a model conditioned on ``condition`` reads beside ``x``, as
        :meth:`Data.conditions`."""
        if condition is None:
            return None
        return self.labels if condition == "label" else self.covariates


def eval_data(config: Config, dataset: str | None = None, limit: int | None = None,
              binarized: bool = True) -> EvalData:
    """Held-out data to evaluate, encode or draw with the model that ``config`` describes.

    Parameters
    ----------
    config : Config
        The run's configuration (``data_shape`` set).
    dataset : str, optional
        A named dataset (its test split) or a file (a .npy array, a table, or a .npz's
        ``x_test``, else its ``x_train``). By default the run's own test set, split as in
        training.
    limit : int, optional
        Keep the first ``limit`` images.
    binarized : bool
        Binarise as below; ``False`` keeps the grey levels (for pictures).

    Returns
    -------
    EvalData
        (N, D) data, binarised once with :data:`TEST_BINARIZE_SEED` where the run binarised,
        exactly as the test set was during training; their labels and covariates; a
        description.

    Raises
    ------
    DataError
        As :func:`load_data`, if the data's shape differs from the run's, and for a
        conditional model, if they lack its labels or covariates.
    """
    counts = _counts(config)
    if dataset is None:
        data = read_data(config.data, counts)
        source = f"the test set of {config.data.dataset}"
    elif dataset in NAMED_DATASETS:
        data = _load_named(dataset, config.data.data_dir, counts)
        source = f"the test split of {dataset}"
    else:
        x, labels, shape = _read_test_file(dataset, config.data, counts)
        columns = config.data.columns if x.ndim == 2 and len(shape) == 1 else None
        data = Data(x[:0], x, shape, None, labels, source=dataset, columns=columns)
        source = dataset
    if config.model.covariates is not None:
        data = split_covariates(data, config.model.covariates)
    x, labels, covariates = data.test_rows, data.test_labels, data.test_covariates
    if data.data_shape != config.model.data_shape:
        raise DataError(
            f"{source} holds data of shape {data.data_shape} but the model was trained on "
            f"{config.model.data_shape}; give data like the training data"
        )
    if config.model.condition == "label":
        if labels is None and not config.model.semi_supervised:
            raise DataError(f"the model is conditioned on the class label, and {source} has no "
                            "labels; give data with labels (y_test in a .npz, class "
                            "subfolders, the label column of a table)")
        if labels is not None:
            check_labels(data.replace(train_labels=labels[:0]), config)
    if limit is not None:
        def first(t):
            return t[:limit] if t is not None else None
        x, labels, covariates = x[:limit], first(labels), first(covariates)
    check_values(x, source, config)
    x = as_float(x)
    if binarized and config.binarizes:
        x = binarize_fixed(x)
    return EvalData(x, labels, covariates, source)


def load_eval_data(
    config: Config, dataset: str | None = None, limit: int | None = None, binarized: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(x, labels, source) of :func:`eval_data`."""
    held = eval_data(config, dataset, limit, binarized)
    return held.x, held.labels, held.source


def class_names(dataset: str, classes: tuple[str, ...] | None = None) -> list[str] | None:
    """The class names of a named dataset (torchvision's), of an image folder with class
    subfolders, or of a table's label column (``classes``, as the run stored them), else
    None."""
    if classes is not None:
        return list(classes)
    if dataset not in NAMED_DATASETS:
        return folder_class_names(dataset)
    if dataset == "shapes":
        from .shapes import SHAPES

        return list(SHAPES)
    import torchvision.datasets as tvd

    return list(getattr(tvd, _TORCHVISION_CLASS[dataset]).classes)


def _load_shapes() -> Data:
    """The rendered shapes (:mod:`pyro_vae.io.shapes`): bool rows (N, 1024), the shape as the
    class label."""
    from . import shapes

    parts = shapes.split()
    return Data(parts["train"].flatten(1), parts["test"].flatten(1), (shapes.SIZE, shapes.SIZE),
                parts["train_factors"][:, 0].clone(), parts["test_factors"][:, 0].clone(),
                source="shapes (rendered)", dataset="shapes")


def known_factors(dataset: str | None) -> tuple[torch.Tensor, tuple[str, ...]] | None:
    """The generative factors of a dataset's test split, (M, F) int64 value indices, and
    their names; None for datasets without known factors."""
    if dataset != "shapes":
        return None
    from . import shapes

    return shapes.split()["test_factors"], shapes.FACTORS


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per grey level: (N, D) probabilities → (N, D) of 0.0/1.0.

    This is the dynamic binarisation of Salakhutdinov & Murray (2008) when redrawn every epoch.
    """
    return torch.bernoulli(x, generator=generator)


def binarize_fixed(x: torch.Tensor) -> torch.Tensor:
    """Binarise once with :data:`TEST_BINARIZE_SEED`, identically in every run, on the CPU."""
    generator = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
    return binarize(x.cpu(), generator).to(x.device)


def _load_named(name: str, data_dir: str | None, counts: bool = False) -> Data:
    if name == "shapes":
        return _load_shapes()
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION_CLASS[name])
    download_root = Path(data_dir) if data_dir else DEFAULT_CACHE
    tried: list[str] = []
    candidates = [Path(data_dir)] if data_dir else []
    if name in DEBIAN_DIRS:
        candidates.append(DEBIAN_DIRS[name])
    root = None
    for folder in candidates:
        tried.append(str(folder))
        root = _torchvision_root(cls, folder, download_root)
        if root is not None:
            break
    if root is None:
        tried.append(str(DEFAULT_CACHE))
        if _has_raw(cls, DEFAULT_CACHE):
            root = DEFAULT_CACHE
    if root is None:
        try:
            cls(str(download_root), train=True, download=True)
            root = download_root
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError …
            hint = (
                "apt-get install dataset-fashion-mnist (Debian), or "
                if name == "fashion-mnist"
                else ""
            )
            raise DataError(
                f"{name} not found in {', '.join(tried)} and the download failed "
                f"({type(err).__name__}); get it with {hint}an online run that downloads it "
                f"into --data-dir (or {DEFAULT_CACHE})"
            ) from None
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, ValueError, TypeError, OSError, AssertionError) as err:
        raise DataError(
            f"the {name} files in {Path(root) / cls.__name__} are damaged ({err}); delete that "
            "folder and run again"
        ) from None
    kind = "values" if counts else "levels"
    return Data(
        train=store(train.data.numpy(), kind),
        test=store(test.data.numpy(), kind),
        data_shape=tuple(train.data.shape[1:]),
        train_labels=train.targets.clone(),
        test_labels=test.targets.clone(),
        source=f"{name} ({root})",
        dataset=name,
    )


def _has_raw(cls, root: Path) -> bool:
    raw = root / cls.__name__ / "raw"
    return all((raw / f).is_file() for f in _IDX_FILES)


def _torchvision_root(cls, folder: Path, extract_to: Path) -> Path | None:
    """A torchvision root holding ``folder``'s IDX files, extracting ``.gz`` files if needed."""
    if _has_raw(cls, folder):
        return folder
    for base in (folder, folder / cls.__name__ / "raw"):
        if all((base / f).is_file() for f in _IDX_FILES):
            return _copy_raw(cls, base, extract_to)
        if all((base / f"{f}.gz").is_file() for f in _IDX_FILES):
            raw = extract_to / cls.__name__ / "raw"
            try:
                raw.mkdir(parents=True, exist_ok=True)
                for f in _IDX_FILES:
                    if not (raw / f).is_file():
                        _extract_atomically(base / f"{f}.gz", raw)
            except OSError as err:
                raise DataError(
                    f"cannot unpack {base} into {raw} ({err.strerror}); "
                    "give a writable --data-dir"
                ) from None
            return extract_to
    return None


def _extract_atomically(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder`` via a scratch folder, so that an interrupted run
    never leaves a truncated file under the final name."""
    from torchvision.datasets.utils import extract_archive

    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
    try:
        extract_archive(str(archive), str(scratch))
        for path in scratch.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_raw(cls, base: Path, root: Path) -> Path:
    """Flat, uncompressed IDX files: link them into a torchvision layout under ``root``."""
    raw = root / cls.__name__ / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for f in _IDX_FILES:
            if not (raw / f).exists():
                os.symlink((base / f).resolve(), raw / f)
    except OSError as err:
        raise DataError(
            f"cannot prepare {raw} ({err.strerror}); give a writable --data-dir"
        ) from None
    return root


def _load_file(path: str, source: DataConfig, counts: bool, holdout: bool = True) -> Data:
    if should_stream(path, source.stream):
        return _stream_file(path, source, counts, holdout)
    arrays = _read_arrays(path, source)
    if "x_train" not in arrays:
        raise DataError(f"{path} has no array x_train; save the training images as x_train")
    x, shape = _check_array(arrays["x_train"], f"{path} (x_train)", counts,
                            source.channels_first)
    labels = _check_labels(arrays.get("y_train"), x.shape[0], path)
    if "x_test" in arrays:
        test, test_shape = _check_array(arrays["x_test"], f"{path} (x_test)", counts,
                                        source.channels_first)
        if test_shape != shape:
            raise DataError(
                f"{path}: x_test has data shape {test_shape} but x_train has {shape}; "
                "make them match"
            )
        test_labels = _check_labels(arrays.get("y_test"), test.shape[0], path)
        return Data(x, test, shape, labels, test_labels, source=path)
    names = {"columns": arrays.get("columns"), "classes": arrays.get("classes")}
    if not holdout:  # a separate test file will be read
        return Data(x, x[:0], shape, labels, None, source=path, **names)
    train_idx, test_idx = _holdout(x.shape[0], path)
    pick = (lambda t, i: t[i] if t is not None else None)
    return Data(x[train_idx], x[test_idx], shape, pick(labels, train_idx),
                pick(labels, test_idx), path, **names)


def _holdout(n: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ascending training and test rows of a seeded 10% hold-out that does not depend on
    --seed (nor on whether the file is streamed), so runs share one test set."""
    if n < 2:
        raise DataError(f"{path} holds {n} data point; give at least two")
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    perm = torch.randperm(n, generator=generator)
    n_test = max(1, math.ceil(HOLDOUT_FRACTION * n))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _stream_file(path: str, source: DataConfig, counts: bool, holdout: bool) -> Data:
    """A .npy file's rows left in the file (:class:`~.stream.MappedRows`) and read batch by
    batch: the training rows and the 10% hold-out (the same rows as in memory)."""
    array, mapped = open_npy(path)
    what = f"{path} (x_train)"
    shape = tuple(int(s) for s in _layout(array, what, source.channels_first).shape[1:])
    # The file's rows are read as they lie (a strided view would make numpy copy the whole
    # file to gather a batch) and put channels first batch by batch.
    channels_first = (source.channels_first if source.channels_first is not None
                      else array.ndim == 4 and array.shape[1] in (1, 3))
    rows = MappedRows(array, mapped, "values",
                      arrange=lambda block: _layout(block, what, channels_first))
    rows.kind = _kind(array, what, counts, release=rows.release)
    if not holdout:  # a separate test file will be read
        return Data(rows, rows[:0], shape, source=path)
    train_idx, test_idx = _holdout(array.shape[0], path)
    return Data(rows.subset(train_idx.numpy()), rows.subset(test_idx.numpy()), shape,
                source=path)


def _read_test_file(path: str, source: DataConfig, counts: bool
                    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
    """A separate test file: a .npy array or a table, or a .npz's ``x_test`` (else its
    ``x_train``)."""
    arrays = _read_arrays(path, source)
    key = "x_test" if "x_test" in arrays else "x_train"
    x, shape = _check_array(arrays[key], f"{path} ({key})", counts, source.channels_first)
    return x, _check_labels(arrays.get("y" + key[1:]), x.shape[0], path), shape


_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


def _read_arrays(path: str, source: DataConfig) -> dict[str, np.ndarray]:
    """The arrays of a .npy (as ``x_train``) or .npz file, read without unpickling, of a
    table (:func:`read_table`) or of a folder of images (:func:`~.folders.read_folder`)."""
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist; check the path")
    if os.path.isdir(path):
        return read_folder(path, source.image_size, source.strict)
    if source.image_size is not None or source.strict:
        raise DataError(f"--image-size and --strict apply to folders of images, not {path}; "
                        "drop them")
    if is_table_file(path):
        return read_table(path, source.label_column, source.drop_non_numeric, source.columns,
                          source.classes)
    if not path.lower().endswith((".npy", ".npz")):
        raise DataError(f"{path} is not .npy, .npz, .csv or .parquet; save the array with "
                        "numpy.save or the table with pandas")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"x_train": loaded}
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files if k in _NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}); check the file") from None
    if "x_train" not in arrays and "x_test" not in arrays:
        raise DataError(
            f"{path} has no array x_train or x_test; save the images as x_train (and x_test)"
        )
    return arrays


_NPZ_KEYS = ("x_train", "x_test", "y_train", "y_test")


def _check_labels(labels: np.ndarray | None, n: int, path: str) -> torch.Tensor | None:
    if labels is None:
        return None
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: labels must be integers of shape ({n},), got {labels.dtype} "
            f"{labels.shape}; fix or drop y_train/y_test"
        )
    return torch.from_numpy(labels.astype(np.int64))


def read_table(path: str, label_column: str | None = None, drop_non_numeric: bool = False,
               columns: tuple[str, ...] | None = None,
               classes: tuple[str, ...] | None = None) -> dict:
    """A .csv or .parquet table (pandas; pyarrow for Parquet) as ``x_train`` (N, D) float64,
    ``columns`` (the D feature names, in order) and, with ``label_column``, ``y_train`` (N,)
    int64 class codes: integers as they are, names as their position in ``classes`` (by
    default the column's sorted values, returned as ``classes``).

    A test table is read with the training table's ``columns`` and ``classes``: its columns
    are matched by name, in any order, and its class names keep the training codes.

    Raises
    ------
    DataError
        An unreadable file, a missing label column, non-numeric columns (unless
        ``drop_non_numeric``; they are named), missing values (counted, with their column), no
        numeric column left, feature columns other than ``columns`` (named), or class names
        not in ``classes``.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path) if path.lower().endswith(".csv") else pd.read_parquet(path)
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read the table {path} ({reason}); check the file") from None
    if table.shape[0] == 0:
        raise DataError(f"{path} has no rows (a header line only?); give a table with data")
    arrays = {}
    if label_column is not None:
        if label_column not in table.columns:
            raise DataError(f"{path} has no column {label_column!r}; its columns are "
                            f"{', '.join(map(str, table.columns[:20]))}")
        labels = table.pop(label_column)
        if labels.isna().any():
            raise DataError(f"{path}: the label column {label_column!r} has "
                            f"{int(labels.isna().sum())} missing values; fill or drop those rows")
        if pd.api.types.is_integer_dtype(labels):  # class numbers stay as they are
            arrays["y_train"] = labels.to_numpy(dtype=np.int64)
        elif classes is None:  # names: codes in sorted order
            codes, names = pd.factorize(labels.astype(str), sort=True)
            arrays["y_train"], arrays["classes"] = codes.astype(np.int64), tuple(names)
        else:  # the training table's codes
            names = labels.astype(str)
            unknown = sorted(set(names) - set(classes))
            if unknown:
                raise DataError(f"{path}: the label column {label_column!r} holds classes "
                                f"{', '.join(unknown[:5])} that the training table does not "
                                f"have (it has {', '.join(classes[:10])}); drop those rows")
            arrays["y_train"] = pd.Categorical(names, categories=list(classes)).codes.astype(
                np.int64)
            arrays["classes"] = tuple(classes)
    other = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if other and not drop_non_numeric:
        raise DataError(f"{path} has non-numeric columns {', '.join(other[:10])}; drop them "
                        "with --drop-non-numeric, or name a class column with --label-column")
    table = table.drop(columns=[c for c in table.columns if str(c) in other])
    if table.shape[1] == 0:
        raise DataError(f"{path} has no numeric column; give a table of numbers")
    table.columns = [str(c) for c in table.columns]
    if columns is not None:
        missing_names = [c for c in columns if c not in table.columns]
        extra = [c for c in table.columns if c not in columns]
        if missing_names or extra:
            parts = ([f"lacks {', '.join(missing_names[:5])}"] if missing_names else []) + (
                [f"has {', '.join(extra[:5])} besides"] if extra else [])
            raise DataError(f"{path} {' and '.join(parts)} the training table's feature "
                            f"columns; give the columns {', '.join(columns[:10])} (in any order)")
        table = table[list(columns)]  # by name, in the training table's order
    missing = table.isna().sum()
    if missing.any():
        column = missing.idxmax()
        raise DataError(f"{path} has {int(missing.sum())} missing values ({int(missing.max())} "
                        f"in column {column!r}); fill or drop them before training")
    arrays["x_train"] = table.to_numpy(dtype=np.float64)  # True/False columns become 1/0
    arrays["columns"] = tuple(table.columns)
    return arrays


def channels_to_front(x: np.ndarray, what: str, channels_first: bool | None) -> np.ndarray:
    """(N, H, W, C) or (N, C, H, W) images, C = 1 or 3, as (N, C, H, W).

    The layout is ``channels_first`` when given (``--channels-first/--channels-last``), else
    the one whose channel axis has 1 or 3 entries while the other end's has not.

    Raises
    ------
    DataError
        When neither end has 1 or 3 entries, or both have and no layout is given.
    """
    first, last = x.shape[1] in (1, 3), x.shape[-1] in (1, 3)
    if channels_first is None:
        if first == last:
            hint = ("give --channels-first for (N, C, H, W) or --channels-last for (N, H, W, C)"
                    if first else "colour images have 1 or 3 channels")
            raise DataError(f"{what} has shape {x.shape}; cannot tell where its channels are: "
                            f"{hint}")
        channels_first = first
    if not (first if channels_first else last):
        layout = "(N, C, H, W)" if channels_first else "(N, H, W, C)"
        raise DataError(f"{what} has shape {x.shape}, not {layout} images with 1 or 3 channels; "
                        "check the layout flag")
    return x if channels_first else np.moveaxis(x, -1, 1)


def _layout(x: np.ndarray, what: str, channels_first: bool | None) -> np.ndarray:
    """(N, H, W), (N, H, W, C), (N, C, H, W) or (N, D) → (N, H, W), (N, C, H, W) or (N, D), a
    view where possible (grey for C = 1)."""
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{what} has shape {x.shape}; expected (N, H, W) or (N, H, W, C) images or (N, D) "
            "vectors"
        )
    if 0 in x.shape:
        raise DataError(f"{what} is empty (shape {x.shape}); give at least one data point")
    if x.ndim == 4:
        x = channels_to_front(x, what, channels_first)
        if x.shape[1] == 1:
            x = x[:, 0]  # grey images, as (N, H, W)
    return x


def _kind(x: np.ndarray, what: str, counts: bool = False, release=None) -> str:
    """How the values of ``x`` are stored (:func:`store`), after checking them chunk by chunk
    (a memory-mapped file is read once, never whole): ``values`` for counts (integers, with a
    count likelihood) and floats, ``binary`` for integers holding only 0 and 1, ``levels``
    for other integers in 0–255 (grey levels). ``release`` is called between chunks."""
    if x.dtype.kind not in "iubf":
        raise DataError(f"{what} holds {x.dtype} values; give uint8 grey levels 0-255 or floats")
    step = max(1, (1 << 24) // max(1, math.prod(x.shape[1:])))
    low, high, finite = math.inf, -math.inf, True
    for start in range(0, x.shape[0], step):
        if release is not None and start:
            release()  # a memory map: let go of the pages already checked
        chunk = x[start : start + step]
        if x.dtype.kind == "f":
            ok = np.isfinite(chunk)
            finite = finite and bool(ok.all())
            chunk = chunk[ok] if not finite else chunk
        if chunk.size:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if x.dtype.kind in "iub":
        if counts:
            if max(abs(low), abs(high)) > 2**24:
                raise DataError(f"{what} holds counts above 2^24, which float32 cannot hold "
                                "exactly")
            return "values"
        if low >= 0 and high <= 1:
            return "binary"  # binary data, 0/1, not grey levels 0/255 and 1/255
        if low < 0 or high > 255:
            raise DataError(f"{what} holds integers outside 0-255; give uint8 grey levels, or "
                            "choose a count likelihood (--likelihood poisson, negbinomial, zinb) "
                            "for counts")
        return "levels"
    if not finite:
        raise DataError(f"{what} contains NaN or infinite values; remove or impute them")
    if counts and max(abs(low), abs(high)) > 2**24:
        raise DataError(f"{what} holds counts above 2^24, which float32 cannot hold exactly")
    if max(abs(low), abs(high)) > np.finfo(np.float32).max:
        raise DataError(f"{what} holds values beyond float32 range; rescale the data")
    return "values"


def _check_array(x: np.ndarray, what: str, counts: bool = False,
                 channels_first: bool | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(N, H, W), (N, H, W, C), (N, C, H, W) or (N, D) integer or float array → ((N, D) stored
    rows (:func:`store`), data shape): (H, W) for grey images (C = 1 too), (C, H, W) for
    colour, channels first. With ``counts``, integers keep their values (checked by the count
    likelihood)."""
    x = _layout(x, what, channels_first)
    return store(x, _kind(x, what, counts)), tuple(int(s) for s in x.shape[1:])
