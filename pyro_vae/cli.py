"""The ``pyro-vae`` command line (click)."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np
import pyro
import torch

from . import __version__
from .config import ACTIVATIONS, ARCHS, BINARIZE_MODES, DEVICES, ELBOS, Config
from .guides import GUIDES
from .errors import PyroVAEError
from .likelihoods import LIKELIHOODS
from .priors import PRIORS


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
            raise click.ClickException(str(err)) from None
        except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
            # torch reports a failed CPU allocation as a plain RuntimeError ("can't allocate").
            if isinstance(err, RuntimeError) and not isinstance(err, torch.OutOfMemoryError) \
                    and "allocate" not in str(err):
                raise
            raise click.ClickException(_OUT_OF_MEMORY.format(reason=_first_line(err))) from None
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise click.ClickException(
                f"{err.strerror or err}{where}; free space or choose a writable place"
            ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pyro-vae")
def main() -> None:
    """Variational autoencoders as Pyro programs: the model p(z)p(x|z), the guide q(z|x),
    trained with SVI and Trace_ELBO."""


@main.command(cls=_Command)
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, mnist, kmnist, or a .npy/.npz file of (N, H, W) or (N, D) "
                   "data (uint8 0-255 or floats); a .npz holds x_train and optional x_test.")
@click.option("--test-dataset", type=click.Path(dir_okay=False),
              help="Separate test file (.npy, or .npz with x_test). Default: the dataset's test "
                   "split, else a seeded 10% hold-out.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder searched first for named datasets and used for downloads.")
@click.option("--limit", type=int, help="Use only the first N training images.")
@click.option("--binarize", type=click.Choice(BINARIZE_MODES),
              help="Bernoulli likelihood only: dynamic (fresh draw of each grey level every "
                   "epoch; default), static (once), none (data already 0/1).")
@click.option("--likelihood", type=click.Choice(tuple(LIKELIHOODS)), default="bernoulli",
              show_default=True, help="p(x|z).")
@click.option("--obs-scale", type=float,
              help="Fixed scale c of the normal (N(f(z), c²I)) and laplace likelihoods "
                   "[default: 0.1].")
@click.option("--min-obs-scale", type=float,
              help="Floor of the learned scale of normal-learned [default: 0.01].")
@click.option("--prior", type=click.Choice(tuple(PRIORS)), default="normal", show_default=True,
              help="p(z): normal N(0, I), laplace (sparsity prior), studentt, mog (learned "
                   "mixture of Gaussians), vamp (VampPrior), flow (masked autoregressive flow), "
                   "none (flat; with --guide delta only).")
@click.option("--prior-scale", type=float,
              help="Scale b of the laplace prior (λ = 1/b) [default: 1].")
@click.option("--prior-df", type=float,
              help="Degrees of freedom of the studentt prior [default: 3].")
@click.option("--prior-components", type=int,
              help="Components of the mog prior / pseudo-inputs of the vamp prior [default: 50].")
@click.option("--guide", type=click.Choice(tuple(GUIDES)), default="normal", show_default=True,
              help="q(z|x): normal (diagonal Gaussian), iaf (Gaussian + inverse autoregressive "
                   "flows), delta (point mass: the deterministic autoencoder).")
@click.option("--flows", type=int,
              help="Flow layers of the iaf guide and of the flow prior [default: 2].")
@click.option("--arch", type=click.Choice(ARCHS), default="mlp", show_default=True,
              help="Networks: mlp, conv (images with sides divisible by 4), linear (one affine "
                   "map each way; with a normal likelihood, probabilistic PCA).")
@click.option("--z-dim", type=int, default=20, show_default=True, help="Latent dimension.")
@click.option("--hidden", type=int, multiple=True, default=(400,), show_default=True,
              help="Hidden layer width; repeat for more layers (--hidden 512 --hidden 256).")
@click.option("--activation", type=click.Choice(ACTIVATIONS), default="relu", show_default=True)
@click.option("--corrupt", metavar="gaussian:σ|mask:p",
              help="Denoising: feed the guide a corrupted x̃ (Gaussian noise, or each pixel "
                   "zeroed with probability p) while the likelihood scores the clean x.")
@click.option("--contractive", type=float, default=0.0, show_default=True,
              help="λ of the contractive penalty λ‖∂f(x)/∂x‖²_F on the encoder.")
@click.option("--elbo", type=click.Choice(ELBOS), default="trace", show_default=True,
              help="trace (Trace_ELBO), meanfield (analytic KL where known), iwae (IWAE bound, "
                   "RenyiELBO α=0).")
@click.option("--particles", type=int, default=1, show_default=True,
              help="Samples of z per image: R of the Monte Carlo ELBO, K ≥ 2 of the IWAE bound.")
@click.option("--beta", type=float, default=1.0, show_default=True,
              help="Weight of the KL term (β-VAE).")
@click.option("--kl-warmup", type=int, default=0, show_default=True,
              help="Epochs over which the KL weight rises linearly from 0 to β.")
@click.option("--clip-norm", type=float,
              help="Clip the gradient of each parameter tensor to this norm (Pyro's clip_args; "
                   "not one global norm).")
@click.option("--skip-nonfinite", type=int, default=0, show_default=True, metavar="N",
              help="Skip up to N batches whose loss or gradient is NaN or infinite (the "
                   "parameters stay as they were) before stopping.")
@click.option("--checkpoint-every", type=int, metavar="STEPS",
              help="Also save the training state every STEPS steps, not only after each epoch.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; runs on CPU are reproducible.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--jit/--no-jit", default=None,
              help="Compile the objective with Pyro's JitTrace_ELBO. Default: whenever the run "
                   "allows it (--elbo trace without --kl-warmup or --contractive).")
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
                           test_bits_per_dim for discrete likelihoods
      training_curve.png   train and test -ELBO per epoch
      samples.png          64 draws of the mean of p(x|z), z ~ p(z) (not for --prior none)
      reconstructions.png  rows of test images, the binary draw the model scores
                           (binarised Bernoulli only) and the reconstruction
      training_state.safetensors
                           weights, optimiser and RNG states for --resume (every epoch)
    """
    from click.core import ParameterSource

    from .distributed import cluster_from_env
    from .errors import ConfigError
    from .train import fit as fit_vae

    started = time.perf_counter()
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in (*options, "out", "overwrite")
                 if name != "epochs" and ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            raise ConfigError(
                f"--resume takes every option from the run's config.json; drop {', '.join(given)} "
                "(only --epochs may be given)"
            )
        epochs = {} if ctx.get_parameter_source("epochs") == ParameterSource.DEFAULT else {
            "epochs": options["epochs"]}
        result = fit_vae(resume=resume, progress=not quiet, **epochs)
        out = resume
    else:
        if out is None:
            raise ConfigError("give --out RUN_DIR for a new run, or --resume RUN_DIR")
        config = Config(**options)
        result = fit_vae(config, out, overwrite=overwrite, progress=not quiet)
    cluster = cluster_from_env()
    if cluster is not None and not cluster.is_main:
        return  # under torchrun, rank 0 reports
    last = result.metrics[-1]
    click.echo(
        f"done: {last['epoch']} epochs in {time.perf_counter() - started:.0f} s; "
        f"test -ELBO {last['test_neg_elbo']:.2f} nats/image "
        f"(train {last['train_neg_elbo']:.2f}); run written to {out}"
    )


MODES = ("prior", "reconstruct", "interpolate", "traverse", "manifold", "latents")
_DEFAULT_NUM = {"prior": 64, "reconstruct": 32, "interpolate": 8, "traverse": 1,
                "manifold": 15, "latents": 2000}


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--mode", type=click.Choice(MODES), default="prior", show_default=True,
              help="prior: z ~ p(z), x ~ p(x|z); reconstruct: test images above their "
                   "reconstructions; interpolate: decoded line between two encodings; traverse: "
                   "one latent unit varied per row; manifold: decoded grid over the prior's "
                   "quantiles (z-dim 2); latents: map of posterior means coloured by label.")
@click.option("--num", type=int,
              help="prior: draws [64]; reconstruct: images [32]; interpolate: pairs [8]; "
                   "traverse: which test image, 1 = the first [1]; manifold: grid side [15]; "
                   "latents: images [2000].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mean", is_flag=True,
              help="prior mode: the mean of p(x|z) (e.g. pixel probabilities) instead of a draw.")
@click.option("--nrow", type=int, default=8, show_default=True,
              help="Images per grid row (prior and reconstruct).")
@click.option("--dataset", help="Images for the modes that need them: as for 'evaluate'.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="A .png picture; in prior mode also .npy for the (num, ...) array.")
def sample(run_dir, mode, num, seed, mean, nrow, dataset, out) -> None:
    """Pictures of what the model in RUN_DIR learned; by default draws z ~ p(z), x ~ p(x|z)."""
    from . import plots
    from .checkpoint import atomic_write_bytes, load
    from .data import binarize_fixed, class_names, load_eval_data
    from .errors import ConfigError

    # Range checks here rather than click.IntRange, whose usage errors span three lines.
    _positive(num=num, nrow=nrow)
    _check_seed(seed)
    suffix = _check_out_file(out, (".png", ".npy") if mode == "prior" else (".png",))
    vae = load(run_dir)
    shape = vae.config.data_shape
    if suffix == ".png" and mode != "latents" and len(shape) != 2:
        raise ConfigError(f"the data have shape {shape}, not images; use --out FILE.npy")
    if mode == "manifold" and vae.z_dim != 2:
        raise ConfigError(f"--mode manifold needs a model with --z-dim 2; this one has {vae.z_dim}")
    if mode in ("prior", "manifold") and vae.config.prior == "none":
        raise ConfigError(
            "this model has the flat prior (--prior none), which cannot be sampled; "
            "use --mode reconstruct, interpolate, traverse or latents"
        )
    num = num or _DEFAULT_NUM[mode]
    pyro.set_rng_seed(seed)
    if mode == "prior":
        x = vae.sample(num, mean=mean)
        if suffix == ".npy":
            buffer = io.BytesIO()
            np.save(buffer, x.reshape(num, *shape).numpy())
            atomic_write_bytes(out, buffer.getvalue())
        else:
            plots.save_image_grid(x, shape, out, nrow=nrow)
        kind = "means of p(x|z)" if mean else "draws x ~ p(x|z)"
        click.echo(f"wrote {num} {kind} to {out}")
        return
    if mode == "manifold":
        plots.save_image_grid(plots.manifold_grid(vae, num), shape, out, nrow=num)
        click.echo(f"wrote the decoded {num}×{num} grid over the prior's quantiles to {out}")
        return
    wanted = {"reconstruct": num, "interpolate": 2 * num, "traverse": num, "latents": num}[mode]
    grey, labels, source = load_eval_data(vae.config, dataset, wanted, binarized=False)
    seen = binarize_fixed(grey) if vae.config.binarization in ("dynamic", "static") else grey
    if mode == "latents":
        codes = torch.cat([vae.encode(xb)[0] for xb in seen.split(1000)])
        plots.save_latent_map(codes, labels, out, class_names(dataset or vae.config.dataset))
        click.echo(f"wrote the map of {codes.shape[0]} posterior means ({source}) to {out}")
        return
    if mode == "reconstruct":
        count = min(num, grey.shape[0]) // nrow * nrow or grey.shape[0]
        per_row = min(nrow, count)
        rows = [grey[:count], vae.reconstruct(seen[:count])]
        plots.save_image_grid(plots.interleave_rows(rows, per_row), shape, out, nrow=per_row)
        click.echo(f"wrote {count} test images above their reconstructions to {out}")
    elif mode == "interpolate":
        pairs = grey.shape[0] // 2
        if pairs == 0:
            raise ConfigError("--mode interpolate needs at least two images")
        grid = plots.interpolation_grid(vae, seen[:pairs], seen[pairs : 2 * pairs], steps=8,
                                        shown_a=grey[:pairs], shown_b=grey[pairs : 2 * pairs])
        plots.save_image_grid(grid, shape, out, nrow=10)
        click.echo(f"wrote interpolations between {pairs} pairs of test images to {out}")
    else:
        index = min(num, grey.shape[0]) - 1
        grid = plots.traversal_grid(vae, seen[index : index + 1])
        plots.save_image_grid(grid, shape, out, nrow=9)
        click.echo(f"wrote traversals of {vae.z_dim} latent units around test image {index} "
                   f"to {out}")


def _check_out_file(out: str, suffixes: tuple[str, ...]) -> str:
    """The lower-case suffix of ``out`` after checking it names a writable file of that kind."""
    from .errors import ConfigError

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
    from .errors import ConfigError

    for flag, value in values.items():
        if value is not None and not (0 < value < float("inf")):
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")


def _check_seed(seed: int) -> None:
    from .errors import ConfigError

    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer in [0, 2^32), got {seed}")


def _device(name: str):
    from .train import resolve_device

    return resolve_device(name)


def _finite_json(value):
    """NaN and infinities become null, which JSON can hold."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


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
    from .checkpoint import atomic_write_bytes, load
    from .data import load_eval_data
    from .evaluate import evaluate as run_evaluation

    _positive(iwae_samples=iwae_samples, limit=limit, batch_size=batch_size,
              proposal_scale=proposal_scale)
    _check_seed(seed)
    if json_path is not None:
        _check_out_file(json_path, (".json",))
    device = _device(device)
    vae = load(run_dir, device)
    x, _, source = load_eval_data(vae.config, dataset, limit)
    x = x.to(device)
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    result = run_evaluation(vae, x, iwae_samples=iwae_samples, batch_size=batch_size,
                            proposal_scale=proposal_scale, progress=not quiet)
    result.pop("nll_per_image")
    result["dataset"] = source
    result["seconds"] = round(time.perf_counter() - started, 2)
    bits = result["bits_per_dim"]
    kl = result["kl_per_dim"]
    lines = [
        f"images            {result['num_images']} ({source})",
        f"-ELBO             {result['neg_elbo']:.2f} nats/image "
        f"(reconstruction {result['reconstruction']:.2f} + KL {result['kl']:.2f})",
        f"NLL               {result['nll']:.2f} ± {result['nll_stderr']:.2f} nats/image "
        f"(importance sampled, K = {iwae_samples})",
        f"bits/dim          {bits:.4f}" if bits is not None else
        "bits/dim          - (continuous likelihood: a density, not bits)",
        f"active units      {result['active_units']} of {vae.z_dim} "
        f"(Cov_x E[z_u|x] > 0.01)",
        "KL per dim        " + (" ".join(f"{v:.2f}" for v in kl) if kl is not None else
                                "- (needs a Gaussian guide and a factorised prior)"),
    ]
    click.echo("\n".join(lines))
    if json_path is not None:
        clean = {k: _finite_json(v) for k, v in result.items()}
        text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(json_path, text.encode())
        click.echo(f"wrote {json_path}")


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--data", "dataset", required=True,
              help="A named dataset (its test split) or a file: a .npy array, or the x_test of a "
                   ".npz (else its x_train).")
@click.option("--limit", type=int, help="Encode the first N images only.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="codes.npy for the posterior means (N, z_dim); codes.npz for arrays loc, "
                   "scale (and labels when the data have them).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def encode(run_dir, dataset, limit, out, device) -> None:
    """Posterior means (and scales) of q(z|x) for the images in --data.

    Images are binarised exactly as the run's test set was, where the run binarised. For the
    iaf guide the location is the flowed base mean and the scale the base's.
    """
    from .checkpoint import atomic_write_bytes, load
    from .data import load_eval_data

    _positive(limit=limit)
    suffix = _check_out_file(out, (".npy", ".npz"))
    device = _device(device)
    vae = load(run_dir, device)
    x, labels, source = load_eval_data(vae.config, dataset, limit)
    loc, scale = zip(*(vae.encode(xb.to(device)) for xb in x.split(1000)))
    loc, scale = torch.cat(loc).cpu().numpy(), torch.cat(scale).cpu().numpy()
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, loc)
    else:
        arrays = {"loc": loc, "scale": scale}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote codes of {loc.shape[0]} images ({source}), z_dim {loc.shape[1]}, to {out}")


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
    import shutil
    import tempfile

    from .checkpoint import load
    from .data import load_eval_data
    from .diagnostics import MIN_PSIS_DRAWS, check_diagnosable
    from .diagnostics import diagnose as run_diagnostics
    from .errors import ConfigError

    _positive(num_images=num_images, draws=draws, psis_draws=psis_draws, chains=chains,
              warmup=warmup, nuts_samples=nuts_samples)
    if nuts_images < 0 or nuts_images > num_images:
        raise ConfigError("--nuts-images must be between 0 and --num-images")
    if psis_draws < MIN_PSIS_DRAWS:
        raise ConfigError(f"--psis-draws must be at least {MIN_PSIS_DRAWS} to fit a Pareto tail")
    if chains < 2:
        raise ConfigError("--chains must be at least 2, or R-hat is not defined")
    _check_seed(seed)
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")
    parent = folder.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot create --out {out}: {parent} is missing or not writable")
    device = _device(device)
    vae = load(run_dir, device)
    check_diagnosable(vae)
    x, _, source = load_eval_data(vae.config, dataset, num_images)
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    # Results appear in --out all at once: a failed or interrupted run leaves nothing there.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        summary = run_diagnostics(vae, x.to(device), staging, source=source, draws=draws,
                                  psis_draws=psis_draws, nuts_images=nuts_images, chains=chains,
                                  warmup=warmup, nuts_samples=nuts_samples, progress=not quiet)
        staging.chmod(0o777 & ~_umask())
        if folder.exists():
            folder.rmdir()  # empty, checked above
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    word = "can be trusted" if summary["trusted"] else "should not be trusted"
    nuts = (f"; NUTS max R-hat {summary['nuts_max_r_hat']:.3f}"
            if "nuts_max_r_hat" in summary else "")
    click.echo(
        f"k-hat > 0.7 for {summary['frac_khat_above_0.7']:.1%} and > 0.5 for "
        f"{summary['frac_khat_above_0.5']:.1%} of {summary['num_images']} images{nuts}; "
        f"the variational posterior {word}. Report: {folder / 'report.md'} "
        f"({time.perf_counter() - started:.0f} s)"
    )


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
