"""The ``pyro-vae`` command line (click): each command parses, calls the package, prints.

This module imports neither torch nor Pyro: ``pyro-vae --help``, every command's ``--help``
and usage errors answer at once. ``fit``'s options are derived from the part and configuration
declarations (:mod:`pyro_vae.registry`, :mod:`pyro_vae.config`) and read, without torch, from
``fit_options.json`` (:mod:`pyro_vae.catalogue`); the commands import the package when they
run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import ConfigError, PyroVAEError
from .registry import DEVICES, PICTURE_MODES

_OUT_OF_MEMORY = ("not enough memory for this model and data ({reason}); lower --hidden, "
                  "--z-dim, --particles, --prior-components or --batch-size")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


class _Command(click.Command):
    """Turns every :class:`PyroVAEError`, the operating system's refusals (disk full,
    permission denied) and failed memory allocations into a one-line ``Error: …`` and exit
    status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PyroVAEError as err:
            # Raised inside a Pyro trace, the message gains the trace's shapes: the first line
            # is ours.
            raise click.ClickException(str(err).strip().split("\n")[0]) from None
        except (MemoryError, RuntimeError) as err:
            # torch.OutOfMemoryError is a RuntimeError; a failed CPU allocation is a plain
            # RuntimeError ("can't allocate").
            if isinstance(err, RuntimeError) and type(err).__name__ != "OutOfMemoryError" \
                    and "allocate" not in str(err):
                raise
            raise click.ClickException(_OUT_OF_MEMORY.format(reason=_first_line(err))) from None
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise click.ClickException(
                f"{err.strerror or err}{where}; free space or choose a writable place"
            ) from None


class _FitCommand(_Command):
    """``fit``, whose options come from the declarations of the parts and config sections."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "_declared", False):
            self.params[:0] = _declared_options()
            self._declared = True
        return super().get_params(ctx)


def _declared_options() -> list[click.Option]:
    """Click options for every configuration option and part option, from their declarations
    as written to ``fit_options.json`` (:mod:`pyro_vae.catalogue`, no torch)."""
    from .catalogue import specs

    return [_click_option(spec) for spec in specs()]


_CLICK_TYPES = {"int": int, "float": float, "str": str, "bool": None}


def _click_option(spec: dict) -> click.Option:
    kind = click.Choice(spec["choices"]) if spec["choices"] else _CLICK_TYPES[spec["type"]]
    default = spec["default"]
    return click.Option(
        [f"--{spec['flag']}", spec["name"]], type=kind,
        default=tuple(default) if isinstance(default, list) else default,
        multiple=spec["multiple"], show_default=spec["show_default"], metavar=spec["metavar"],
        is_flag=True if spec["type"] == "bool" else None, help=spec["help"])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pyro-vae")
def main() -> None:
    """Variational autoencoders as Pyro programs: the model p(z)p(x|z), the guide q(z|x),
    trained with SVI and Trace_ELBO."""


@main.command(cls=_FitCommand)
@click.option("--out", type=click.Path(), help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace the pyro_vae run already in --out.")
@click.option("--resume", type=click.Path(),
              help="Continue this run from its last completed epoch with its own options; "
                   "only --epochs (the new total) may be given.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def fit(ctx: click.Context, out: str | None, overwrite: bool, resume: str | None, quiet: bool,
        **options) -> None:
    """Train a VAE with SVI and write a run directory to --out.

    \b
    --out receives:
      config.json          everything needed to rebuild the model
      model.safetensors    weights (saved after every epoch)
      metrics.csv          epoch, train_seconds, train_neg_elbo, test_neg_elbo (nats/image),
                           test_bits_per_dim for discrete likelihoods, test_accuracy of
                           the classifier q(y|x) for --labelled
      training_curve.png   train and test -ELBO per epoch
      samples.png          64 draws of the mean of p(x|z), z ~ p(z) (not for --prior none);
                           label-conditioned models: 8 per class, a class a row
      reconstructions.png  rows of test images, the binary draw the model scores
                           (binarised Bernoulli only) and the reconstruction
      training_state.safetensors
                           weights, optimiser and RNG states for --resume (every epoch)
    """
    from click.core import ParameterSource

    from .config import Config
    from .training.distributed import cluster_from_env
    from .training.plan import fit as fit_vae

    started = time.perf_counter()
    options = {k: (v if v != () else None) for k, v in options.items()}
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in (*options, "out", "overwrite")
                 if name != "epochs" and ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            raise ConfigError(
                f"--resume takes every option from the run's config.json; drop {', '.join(given)} "
                "(only --epochs may be given)")
        epochs = {} if ctx.get_parameter_source("epochs") == ParameterSource.DEFAULT else {
            "epochs": options["epochs"]}
        result = fit_vae(resume=resume, progress=not quiet, **epochs)
        out = resume
    else:
        if out is None:
            raise ConfigError("give --out RUN_DIR for a new run, or --resume RUN_DIR")
        result = fit_vae(Config(**options), out, overwrite=overwrite, progress=not quiet)
    cluster = cluster_from_env()
    if cluster is not None and not cluster.is_main:
        return  # under torchrun, rank 0 reports
    from .config import data_unit

    last = result.metrics[-1]
    kept = result.metrics[result.kept_epoch - 1] if result.metrics else last
    unit = data_unit(result.model.data_shape)
    accuracy = f", test accuracy {kept['test_accuracy']:.1%}" if "test_accuracy" in kept else ""
    stopped = " (stopped early)" if result.stopped_early else ""
    chosen = ""
    if "validation_neg_elbo" in kept:
        chosen = (f"; kept epoch {kept['epoch']}, validation -ELBO "
                  f"{kept['validation_neg_elbo']:.2f}")
    click.echo(
        f"done: {last['epoch']} epochs{stopped} in {time.perf_counter() - started:.0f} s"
        f"{chosen}; test -ELBO {kept['test_neg_elbo']:.2f} nats/{unit} "
        f"(train {kept['train_neg_elbo']:.2f}){accuracy}; run written to {out}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--mode", type=click.Choice(tuple(PICTURE_MODES)), default="prior",
              show_default=True,
              help="prior: z ~ p(z), x ~ p(x|z); reconstruct: test images above their "
                   "reconstructions; interpolate: decoded line between two encodings; traverse: "
                   "one latent unit varied per row; manifold: decoded grid over the prior's "
                   "quantiles (z-dim 2); latents: map of posterior means coloured by label; "
                   "analogies (label-conditioned models): each test image's style decoded "
                   "under every class.")
@click.option("--num", type=int,
              help="prior: draws [64]; reconstruct: images [32]; interpolate: pairs [8]; "
                   "traverse: which test image, 1 = the first [1]; manifold: grid side [15]; "
                   "latents: images [2000]; analogies: images [8].")
@click.option("--label", type=int,
              help="Label-conditioned models, prior and manifold modes: draw class K (0 to "
                   "K-1). Default: class r mod K in row r (manifold: class 0).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mean", is_flag=True,
              help="prior mode: the mean of p(x|z) (e.g. pixel probabilities) instead of a draw.")
@click.option("--nrow", type=int, default=8, show_default=True,
              help="Images per grid row (prior and reconstruct).")
@click.option("--dataset", help="Images for the modes that need them: as for 'evaluate'.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="A .png picture; in prior mode also .npy for the (num, ...) array.")
def sample(run_dir, mode, num, label, seed, mean, nrow, dataset, out) -> None:
    """Pictures of what the model in RUN_DIR learned; by default draws z ~ p(z), x ~ p(x|z)."""
    from .evaluation.pictures import sample_run

    # Range checks here rather than click.IntRange, whose usage errors span three lines.
    _positive(num=num, nrow=nrow)
    _check_seed(seed)
    _check_out_file(out, (".png", ".npy") if mode == "prior" else (".png",))
    click.echo(sample_run(run_dir, mode, out, num=num, nrow=nrow, mean=mean, dataset=dataset,
                          seed=seed, label=label))


def _check_out_file(out: str, suffixes: tuple[str, ...]) -> str:
    """The lower-case suffix of ``out`` after checking it names a writable file of that kind."""
    suffix = Path(out).suffix.lower()
    if suffix not in suffixes:
        kinds = {".png": ".png (image grid)", ".npy": ".npy (array)", ".npz": ".npz (arrays)",
                 ".json": ".json"}
        raise ConfigError(f"{out} must end in {' or '.join(kinds[s] for s in suffixes)}")
    folder = Path(out).absolute().parent
    if not folder.is_dir():
        raise ConfigError(f"the folder of {out} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"the folder of {out} is not writable; choose another place")
    return suffix


def _positive(**values) -> None:
    """Refuse option values that are not positive finite numbers, naming the flag."""
    for flag, value in values.items():
        if value is not None and not (0 < value < float("inf")):
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer in [0, 2^32), got {seed}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--dataset",
              help="Evaluate on this named dataset's test split, or on this file (the x_test of "
                   "a .npz, else its x_train; a .npy array). Default: the run's own test set.")
@click.option("--iwae-samples", type=int, default=1000, show_default=True,
              help="K importance samples per image for the log-likelihood.")
@click.option("--limit", type=int, help="Evaluate the first N images only.")
@click.option("--batch-size", type=int, default=100, show_default=True, help="Images per pass.")
@click.option("--proposal-scale", type=float,
              help="Point-mass guides only: sample z ~ N(f(x), S²I) as the importance proposal.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the figures to this JSON file.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(run_dir, dataset, iwae_samples, limit, batch_size, proposal_scale, seed, json_path,
             device, quiet) -> None:
    """Held-out -ELBO, importance-sampled log-likelihood, bits/dim, active units of RUN_DIR.

    \b
    The log-likelihood of each image is estimated as
      log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x)
    (Burda et al. 2016), a lower bound that tightens as K grows; memory does not grow with K.
    """
    from .evaluation.evaluate import evaluate_run, summary_lines
    from .io.files import write_json

    _positive(iwae_samples=iwae_samples, limit=limit, batch_size=batch_size,
              proposal_scale=proposal_scale)
    _check_seed(seed)
    if json_path is not None:
        _check_out_file(json_path, (".json",))
    result = evaluate_run(run_dir, dataset=dataset, limit=limit, iwae_samples=iwae_samples,
                          batch_size=batch_size, proposal_scale=proposal_scale, seed=seed,
                          device=device, progress=not quiet)
    click.echo("\n".join(summary_lines(result)))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(("onnx", "torchscript")), default="onnx",
              show_default=True, help="ONNX (torch.export-based exporter) or TorchScript "
              "(torch.jit.trace; deprecated by torch, kept for C++ libtorch users).")
@click.option("--part", type=click.Choice(("decoder", "encoder", "classifier", "both")),
              default="both", show_default=True,
              help="decoder: z (and y) → p(x|z)'s parameters and E[x|z]; encoder: x (and y) → "
              "loc and scale of q(z|x); classifier: x → logits and probs of q(y|x) of a "
              "--labelled run; both: every network (the classifier too, for --labelled).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write into. Default: RUN_DIR/export.")
@click.option("--overwrite", is_flag=True, help="Replace files of an earlier export.")
def export(run_dir, fmt, part, out, overwrite) -> None:
    """Write the run's networks for use outside Python, each file with a JSON sidecar.

    decoder.onnx and decoder.onnx.json, encoder.onnx and encoder.onnx.json (decoder.torchscript.pt
    and decoder.torchscript.json for TorchScript), classifier.onnx for a --labelled run:
    the sidecar names every input and output with its shape (a dynamic batch first), dtype
    and meaning, which likelihood the decoder's outputs parameterise, and the run and epoch
    the weights come from (the kept model, model.safetensors).
    """
    from .io.export import export_run

    written = export_run(run_dir, fmt, part, out, overwrite)
    click.echo(f"wrote {', '.join(str(p) for p in written)}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--data", "dataset", required=True,
              help="A named dataset (its test split) or a file: a .npy array, or the x_test of a "
                   ".npz (else its x_train).")
@click.option("--limit", type=int, help="Encode the first N images only.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="codes.npy for the posterior means (N, z_dim); codes.npz for arrays loc, "
                   "scale (and labels when the data have them; probs, q(y|x), for --labelled "
                   "runs; loc_z2, scale_z2, ... of the upper layers for --latent-layers runs).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def encode(run_dir, dataset, limit, out, device) -> None:
    """Posterior means (and scales) of q(z|x) for the images in --data.

    Images are binarised exactly as the run's test set was, where the run binarised. For the
    iaf guide the location is the flowed base mean and the scale the base's. A conditional
    model encodes with the data's labels or covariates, q(z|x, y): codes with their effect
    taken out; a --labelled run with its classifier's most probable class. A hierarchical
    model's codes are z_1's, with the upper layers' (q(z_{l+1}|z_l) at the mean code below) in
    a .npz.
    """
    from .evaluation.evaluate import encode_run
    from .io.files import save_arrays

    _positive(limit=limit)
    suffix = _check_out_file(out, (".npy", ".npz"))
    codes, source = encode_run(run_dir, dataset, limit=limit, device=device)
    save_arrays(out, **({"loc": codes["loc"]} if suffix == ".npy" else codes))
    n, z_dim = codes["loc"].shape
    from .config import data_unit
    from .io.checkpoint import read_config

    unit = data_unit(read_config(run_dir).model.data_shape)
    upper = [(k[4:], v.shape[1]) for k, v in codes.items() if k.startswith("loc_")]
    named = ", ".join(f"{site}: {d}" for site, d in upper)
    layers = ("" if not upper else f" (and {named})" if suffix == ".npz"
              else f" ({named} not written: give a .npz --out for them)")
    click.echo(f"wrote codes of {n} {unit}s ({source}), z_dim {z_dim}{layers}, to {out}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--dataset",
              help="Images to diagnose: as for 'evaluate'. Default: the run's test set.")
@click.option("--num-images", type=int, default=100, show_default=True,
              help="Test images for the InferenceData and Pareto k-hat.")
@click.option("--draws", type=int, default=100, show_default=True,
              help="Draws of z ~ q(z|x) per image stored in posterior.nc.")
@click.option("--psis-draws", type=int, default=1000, show_default=True,
              help="Importance weights per image for Pareto k-hat.")
@click.option("--nuts-images", type=int, default=4, show_default=True,
              help="Images for the NUTS reference posterior (0 skips NUTS).")
@click.option("--chains", type=int, default=4, show_default=True, help="NUTS chains.")
@click.option("--warmup", type=int, default=400, show_default=True, help="NUTS warm-up steps.")
@click.option("--nuts-samples", type=int, default=800, show_default=True,
              help="NUTS draws per chain.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New or empty folder for the results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def diagnose(run_dir, dataset, num_images, draws, psis_draws, nuts_images, chains, warmup,
             nuts_samples, seed, device, out, quiet) -> None:
    """Check the variational posterior of RUN_DIR with ArviZ.

    \b
    Writes into --out:
      report.md            whether q(z|x) can be trusted, in words, with the figures
      posterior.nc         InferenceData: posterior (z ~ q), prior, posterior_predictive,
                           log_likelihood, observed_data (arviz.from_netcdf opens it)
      khat.csv, khat.png   Pareto k-hat per image (Yao et al. 2018)
      nuts.nc, nuts_summary.csv, guide_vs_nuts.csv, pairs_image*.png
                           NUTS reference posterior, R-hat/ESS, guide beside NUTS
      diagnostics.json     the summary figures
    """
    from .evaluation.diagnostics import diagnose_run

    _positive(num_images=num_images, draws=draws, psis_draws=psis_draws, chains=chains,
              warmup=warmup, nuts_samples=nuts_samples)
    _check_seed(seed)
    started = time.perf_counter()
    summary = diagnose_run(run_dir, out, dataset=dataset, num_images=num_images, draws=draws,
                           psis_draws=psis_draws, nuts_images=nuts_images, chains=chains,
                           warmup=warmup, nuts_samples=nuts_samples, seed=seed, device=device,
                           progress=not quiet)
    word = "can be trusted" if summary["trusted"] else "should not be trusted"
    nuts = (f"; NUTS max R-hat {summary['nuts_max_r_hat']:.3f}"
            if "nuts_max_r_hat" in summary else "")
    click.echo(
        f"k-hat > 0.7 for {summary['frac_khat_above_0.7']:.1%} and > 0.5 for "
        f"{summary['frac_khat_above_0.5']:.1%} of {summary['num_images']} "
        f"{summary['unit']}s{nuts}; "
        f"the variational posterior {word}. Report: {Path(out) / 'report.md'} "
        f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
