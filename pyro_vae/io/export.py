"""Export a trained run's networks for serving outside Python: ONNX (torch's ``torch.export``
based exporter, ``dynamo=True``) or TorchScript (``torch.jit.trace``), each file with a JSON
sidecar that says what its inputs and outputs are.

- The **decoder** maps a latent code ``z`` (batch, z_dim) (and a conditional model's ``y``) to
  the parameters of p(x|z) under their distribution's own names (``logits`` of a Bernoulli,
  ``loc`` and ``scale`` of a Normal, …) and to ``mean``, E[x|z] in the data's units, the picture
  ``pyro-vae sample`` draws.
- The **encoder** maps data ``x`` (batch, D), in the units the run was trained on, to ``loc``
  and ``scale`` of q(z|x) = Normal(loc, diag scale²) (a point mass at ``loc`` for ``--guide
  delta``); it applies what the run's encoder reads first (log(1 + x) of counts, the
  standardisation).
- The **classifier** of a semi-supervised run (``--labelled``) maps ``x`` (batch, D) to the
  ``logits`` and ``probs`` (batch, K) of q(y|x).

Each has a dynamic batch dimension. ``pyro-vae export`` and :func:`export_run` write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import pyro
import torch
from torch import nn

from ..errors import ConfigError, RunDirError
from . import checkpoint
from .files import atomic_write_bytes

#: Identifies a sidecar file; bumped when its layout changes.
SIDECAR_FORMAT, SIDECAR_VERSION = "pyro_vae.export", 1
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PARTS = ("decoder", "encoder", "classifier", "both")
#: ONNX opset of the exported graphs.
OPSET = 18

#: A likelihood's distribution → its parameters that the decoder file outputs, and what they
#: are (formula of p(x_d | z)).
_PARAMS = {
    "Bernoulli": (("logits",), "x_d ~ Bernoulli(sigmoid(logits_d))"),
    "ContinuousBernoulli": (("logits",), "x_d ~ ContinuousBernoulli(sigmoid(logits_d)) "
                                         "(Loaiza-Ganem & Cunningham 2019)"),
    "Normal": (("loc", "scale"), "x_d ~ Normal(loc_d, scale_d)"),
    "Laplace": (("loc", "scale"), "x_d ~ Laplace(loc_d, scale_d)"),
    "Categorical": (("logits",), "x_d ~ Categorical(softmax(logits_d)) over the 256 grey "
                                 "levels; grey level k is the value k/255"),
    "Binomial": (("logits",), "x_d ~ Binomial({trials}, sigmoid(logits_d))"),
    "Poisson": (("rate",), "x_d ~ Poisson(rate_d)"),
    "NegativeBinomial": (("total_count", "logits"),
                         "x_d ~ NegativeBinomial(total_count_d, logits_d), of mean "
                         "total_count_d exp(logits_d); total_count_d is the inverse dispersion"),
    "ZeroInflatedNegativeBinomial": (
        ("total_count", "logits", "gate_logits"),
        "x_d = 0 with probability sigmoid(gate_logits_d), else x_d ~ "
        "NegativeBinomial(total_count_d, logits_d)"),
}


def _base(distribution):
    """The per-dimension distribution inside ``Independent`` (``to_event``); a zero-inflated
    distribution is kept whole, not unwrapped to the distribution it inflates."""
    while isinstance(distribution, torch.distributions.Independent):
        distribution = distribution.base_dist
    return distribution


class DecoderExport(nn.Module):
    """The decoder with the likelihood's parameterisation: ``z`` (batch, z_dim) [and ``y``] →
    the distribution's parameters, each (batch, D) ((batch, D, 256) for the categorical
    likelihood), and ``mean`` (batch, D), E[x|z] in data units."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        probe = vae.likelihood(vae.decoder_params(torch.zeros(1, vae.z_dim, device=_device(vae)),
                                                  _probe_condition(vae)))
        self.dist_name = type(_base(probe)).__name__
        if self.dist_name not in _PARAMS:
            raise ConfigError(f"the {vae.describe().likelihood.name} likelihood's decoder cannot "
                              "be exported yet; export --part encoder")
        self.names = _PARAMS[self.dist_name][0]

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None):
        c = self.vae.condition_vector(y)
        params = self.vae.decoder_params(z, c)
        base = _base(self.vae.likelihood(params))
        values = [getattr(base, name) for name in self.names]  # broadcast by torch already
        scaling = self.vae.scaling
        if scaling is not None:  # a standardised run: its location-scale family in data units
            values = [scaling.loc + scaling.scale * v if name == "loc" else scaling.scale * v
                      for name, v in zip(self.names, values)]
        return (*values, self.vae._mean(params))


class EncoderExport(nn.Module):
    """The encoder: ``x`` (batch, D) [and ``y``] → ``loc``, ``scale`` (batch, z_dim) of q(z|x)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        seen = self.vae.encoder_input(x)
        c = self.vae.condition_vector(y)
        features = self.vae.encoder(seen) if c is None else self.vae.encoder(seen, c)
        return self.vae.family.location(features)


class ClassifierExport(nn.Module):
    """The classifier of the semi-supervised model: ``x`` (batch, D) → ``logits`` and
    ``probs`` (batch, K) of q(y|x)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        logits = self.vae.classifier(self.vae.encoder_input(x))
        return logits, torch.softmax(logits, -1)


def _device(vae) -> torch.device:
    return next(vae.parameters()).device


def _probe_condition(vae, batch: int = 1):
    """A condition vector for tracing: class 0 one-hot, or zero covariates."""
    y = _example_y(vae, batch)
    return vae.condition_vector(y)


def _example_y(vae, batch: int):
    if vae.condition is None:
        return None
    if vae.num_classes is not None:
        return torch.arange(batch, device=_device(vae)) % vae.num_classes
    return torch.zeros(batch, vae.condition.dim, device=_device(vae))


def _check_exportable(vae, config, part: str) -> None:
    family = config.model.guide.name
    if part == "classifier" and not vae.semi_supervised:
        raise ConfigError("only a semi-supervised run (--labelled) has a classifier q(y|x); "
                          "export --part decoder or encoder")
    if part == "encoder" and family == "iaf":
        raise ConfigError("the iaf guide's q(z|x) is a flow on top of its encoder's Gaussian, "
                          "which an export of the encoder alone would misstate; export --part "
                          "decoder")
    if part == "decoder" and vae.likelihood.reads_observation:
        raise ConfigError(f"the {config.model.likelihood.name} likelihood's decoder reads each "
                          "row's library size from the observed data, which an exported "
                          "decoder does not have; export --part encoder, or train with "
                          "--library none")


def _inputs(vae, part: str, config) -> list[dict]:
    """The sidecar's description of the file's inputs."""
    d = int(torch.Size(vae.data_shape).numel())
    if part == "decoder":
        first = {"name": "z", "shape": ["batch", vae.z_dim], "dtype": "float32",
                 "description": _z_description(vae, config)}
    else:
        first = {"name": "x", "shape": ["batch", d], "dtype": "float32",
                 "description": f"data points flattened from {list(vae.data_shape)}, in the "
                                f"units the run was trained on ({_data_units(config)})"}
    inputs = [first]
    if vae.condition is not None and part != "classifier":
        if vae.num_classes is not None:
            inputs.append({"name": "y", "shape": ["batch"], "dtype": "int64",
                           "description": f"class label 0 … {vae.num_classes - 1} "
                                          "(one-hot coded inside)"})
        else:
            names = list(config.model.covariates or ())
            inputs.append({"name": "y", "shape": ["batch", len(names)], "dtype": "float32",
                           "description": f"covariates {', '.join(names)}, as in the table"})
    return inputs


def _z_description(vae, config) -> str:
    if vae.hierarchical:
        return ("z_1, the lowest stochastic layer's code; its prior p(z_1|z_2) and the layers "
                "above are not exported, so draw z_1 in pyro_vae or encode data")
    prior = config.model.prior.name
    if prior == "normal":
        return "latent code; the prior is Normal(0, I), so z ~ N(0, I) gives samples"
    return (f"latent code; the prior ({prior}) is not exported: draw z from it in pyro_vae, "
            "or encode data")


def _data_units(config) -> str:
    name = config.model.likelihood.name
    if name in ("bernoulli",):
        return "grey levels in [0, 1]; the run trained on binary draws of them" \
            if config.binarizes else "binary values 0/1"
    if name in ("categorical",):
        return "grey levels k/255 in [0, 1]"
    if config.model.likelihood.cls.counts:
        return "counts"
    return "the data's own values"


def _outputs(vae, part: str, module) -> list[dict]:
    d = int(torch.Size(vae.data_shape).numel())
    if part == "encoder":
        point = vae.family.point_mass
        posterior = "q(z|x, y)" if vae.condition is not None else "q(z|x)"
        if vae.semi_supervised:
            posterior += " (give y; the classifier q(y|x) is export --part classifier)"
        return [
            {"name": "loc", "shape": ["batch", vae.z_dim], "dtype": "float32",
             "description": "z = loc, the point-mass guide's code" if point else
             f"mean of {posterior} = Normal(loc, diag scale^2)"},
            {"name": "scale", "shape": ["batch", vae.z_dim], "dtype": "float32",
             "description": "0 (point mass)" if point else f"standard deviations of "
                                                           f"{posterior.split(' (')[0]}"},
        ]
    if part == "classifier":
        k = vae.num_classes
        return [{"name": "logits", "shape": ["batch", k], "dtype": "float32",
                 "description": f"log q(y|x) up to a constant per row, classes 0 … {k - 1}"},
                {"name": "probs", "shape": ["batch", k], "dtype": "float32",
                 "description": "q(y|x) = softmax(logits), the classifier's class "
                                "probabilities"}]
    formula = _PARAMS[module.dist_name][1].format(trials=getattr(vae.likelihood, "trials", ""))
    shape = ["batch", d] + ([256] if module.dist_name == "Categorical" else [])
    outputs = [{"name": name, "shape": shape, "dtype": "float32",
                "description": f"parameter {name} of p(x|z): {formula}"}
               for name in module.names]
    outputs.append({"name": "mean", "shape": ["batch", d], "dtype": "float32",
                    "description": f"E[x|z] in data units, shaped {list(vae.data_shape)} per "
                                   "row"})
    return outputs


def _example(vae, part: str, batch: int = 3) -> tuple:
    """Example inputs for tracing, of ``batch`` rows."""
    device = _device(vae)
    d = int(torch.Size(vae.data_shape).numel())
    first = (torch.randn(batch, vae.z_dim, device=device) if part == "decoder"
             else torch.rand(batch, d, device=device))
    y = _example_y(vae, batch) if part != "classifier" else None
    return (first,) if y is None else (first, y)


@contextlib.contextmanager
def _quiet():
    """No argument checks while tracing (their Python booleans would freeze into the graph),
    and torch's deprecation notes on TorchScript kept out of the user's console."""
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same "
                                "shape constraints.*")  # x and y: one batch dimension
        yield


def export_part(vae, config, part: str, fmt: str, path: Path) -> dict:
    """Write ``part`` (``decoder``, ``encoder`` or ``classifier``) of ``vae`` to ``path`` in
    ``fmt`` (``onnx`` or ``torchscript``), atomically; returns the sidecar dict.

    Raises
    ------
    ConfigError
        For a part this model cannot export (see :func:`_check_exportable`).
    """
    _check_exportable(vae, config, part)
    path = Path(path)
    vae = vae.eval()
    module = {"decoder": DecoderExport, "encoder": EncoderExport,
              "classifier": ClassifierExport}[part](vae).eval()
    inputs, outputs = _inputs(vae, part, config), _outputs(vae, part, module)
    example = _example(vae, part)
    names_in, names_out = [i["name"] for i in inputs], [o["name"] for o in outputs]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _quiet(), torch.no_grad():
            if fmt == "onnx":
                batch = torch.export.Dim("batch", min=1)
                dynamic = {name: {0: batch} for name in names_in}
                torch.onnx.export(module, example, tmp, dynamo=True, input_names=names_in,
                                  output_names=names_out, dynamic_shapes=dynamic,
                                  opset_version=OPSET, verbose=False)
            else:
                torch.jit.trace(module, example, check_trace=False).save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "part": part,
            "file": path.name, "runtime": fmt, **({"opset": OPSET} if fmt == "onnx" else {}),
            "inputs": inputs, "outputs": outputs, "data_shape": list(vae.data_shape),
            "z_dim": vae.z_dim, "likelihood": config.model.likelihood.name,
            "prior": config.model.prior.name, "guide": config.model.guide.name}


def export_run(run_dir, fmt: str = "onnx", part: str = "both", out=None,
               overwrite: bool = False) -> list[Path]:
    """Export the networks of the run in ``run_dir`` (its kept model, ``model.safetensors``)
    into ``out`` (default ``run_dir/export``): ``decoder.onnx`` with ``decoder.onnx.json``
    and/or ``encoder.onnx`` with ``encoder.onnx.json`` (``decoder.torchscript.pt`` with
    ``decoder.torchscript.json`` for TorchScript), and ``classifier.onnx`` for a
    semi-supervised run. ``part`` is ``decoder``, ``encoder``, ``classifier`` or ``both``
    (every network of the run: decoder and encoder, and the classifier q(y|x) of a
    ``--labelled`` run, whose encoder needs its y). Returns the paths written.

    Raises
    ------
    ConfigError
        For an unknown format or part, or a part this model cannot export.
    RunDirError, CheckpointError
        As :func:`pyro_vae.load`; RunDirError also if a file to write exists already and
        ``overwrite`` is not set (nothing is written then).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    if part not in PARTS:
        raise ConfigError(f"unknown part {part!r}; use {', '.join(PARTS)}")
    vae, config = checkpoint.load_run(run_dir)
    if config.model.user_built:
        raise ConfigError("this run holds a user-built model, whose networks are your own: "
                          "export them from Python with torch.onnx.export")
    parts = (("decoder", "encoder") + (("classifier",) if vae.semi_supervised else ())
             if part == "both" else (part,))
    for name in parts:
        _check_exportable(vae, config, name)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    targets = [(name, out / f"{name}{FORMATS[fmt]}", out / f"{name}.{fmt}.json")
               for name in parts]
    existing = [str(p) for _, f, s in targets for p in (f, s) if p.exists()]
    if existing and not overwrite:
        raise RunDirError(f"{existing[0]} exists; add --overwrite to replace it, or give "
                          "another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot make {out} ({err.strerror}); give another --out") from None
    written = []
    epoch = (checkpoint.read_weights(run_dir) or ({}, {}))[1].get("epoch")
    for name, file, sidecar in targets:
        description = export_part(vae, config, name, fmt, file)
        description["run"] = str(Path(run_dir).resolve())
        if epoch is not None:
            description["epoch"] = int(epoch)
        atomic_write_bytes(sidecar,
                                      (json.dumps(description, indent=2) + "\n").encode())
        written += [file, sidecar]
    return written
