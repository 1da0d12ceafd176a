"""The ``pyro-vae`` command line (click)."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import click
import numpy as np
import pyro

from . import __version__
from .config import ACTIVATIONS, ARCHS, BINARIZE_MODES, DEVICES, ELBOS, Config
from .guides import GUIDES
from .errors import PyroVAEError
from .likelihoods import LIKELIHOODS
from .priors import PRIORS


class _Command(click.Command):
    """Turns every :class:`PyroVAEError`, and the operating system's refusals (disk full,
    permission denied), into a one-line ``Error: …`` and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PyroVAEError as err:
            raise click.ClickException(str(err)) from None
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
@click.option("--obs-scale", type=float, default=0.1, show_default=True,
              help="Fixed scale c of the normal (N(f(z), c²I)) and laplace likelihoods.")
@click.option("--min-obs-scale", type=float, default=0.01, show_default=True,
              help="Floor of the learned scale of normal-learned.")
@click.option("--prior", type=click.Choice(tuple(PRIORS)), default="normal", show_default=True,
              help="p(z): normal N(0, I), laplace (sparsity prior), studentt, mog (learned "
                   "mixture of Gaussians), vamp (VampPrior), flow (masked autoregressive flow), "
                   "none (flat; with --guide delta only).")
@click.option("--prior-scale", type=float, default=1.0, show_default=True,
              help="Scale b of the laplace prior (λ = 1/b).")
@click.option("--prior-df", type=float, default=3.0, show_default=True,
              help="Degrees of freedom of the studentt prior.")
@click.option("--prior-components", type=int, default=50, show_default=True,
              help="Components of the mog prior / pseudo-inputs of the vamp prior.")
@click.option("--guide", type=click.Choice(tuple(GUIDES)), default="normal", show_default=True,
              help="q(z|x): normal (diagonal Gaussian), iaf (Gaussian + inverse autoregressive "
                   "flows), delta (point mass: the deterministic autoencoder).")
@click.option("--flows", type=int, default=2, show_default=True,
              help="Flow layers of the iaf guide and of the flow prior.")
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
              help="Samples of z per image: R of the Monte Carlo ELBO, K of the IWAE bound.")
@click.option("--beta", type=float, default=1.0, show_default=True,
              help="Weight of the KL term (β-VAE).")
@click.option("--kl-warmup", type=int, default=0, show_default=True,
              help="Epochs over which the KL weight rises linearly from 0 to β.")
@click.option("--clip-norm", type=float,
              help="Clip each parameter's gradient to this norm.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; runs on CPU are reproducible.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace the pyro_vae run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def fit(out: str, overwrite: bool, quiet: bool, **options) -> None:
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
    """
    from .train import fit as fit_vae

    config = Config(**options)
    started = time.perf_counter()
    result = fit_vae(config, out, overwrite=overwrite, progress=not quiet)
    last = result.metrics[-1]
    click.echo(
        f"done: {last['epoch']} epochs in {time.perf_counter() - started:.0f} s; "
        f"test -ELBO {last['test_neg_elbo']:.2f} nats/image "
        f"(train {last['train_neg_elbo']:.2f}); run written to {out}"
    )


@main.command(cls=_Command)
@click.argument("run_dir", type=click.Path())
@click.option("--num", type=int, default=64, show_default=True, help="Number of draws.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mean", is_flag=True,
              help="Write the mean of p(x|z) (e.g. pixel probabilities) instead of a draw of x.")
@click.option("--nrow", type=int, default=8, show_default=True, help="Images per grid row.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output: .png for an image grid, .npy for the (num, ...) array.")
def sample(run_dir: str, num: int, seed: int, mean: bool, nrow: int, out: str) -> None:
    """Draw z ~ p(z) and x ~ p(x|z) from the model in RUN_DIR."""
    from .checkpoint import atomic_write_bytes, load
    from .errors import ConfigError
    from .plots import save_image_grid

    # Range checks here rather than click.IntRange, whose usage errors span three lines.
    if num <= 0 or nrow <= 0:
        raise ConfigError("--num and --nrow must be positive integers")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer in [0, 2^32), got {seed}")
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".npy"):
        raise ConfigError(f"--out {out} must end in .png (image grid) or .npy (array)")
    folder = Path(out).absolute().parent
    if not folder.is_dir():
        raise ConfigError(f"the folder of --out {out} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"the folder of --out {out} is not writable; choose another place")
    vae = load(run_dir)
    shape = vae.config.data_shape
    if suffix == ".png" and len(shape) != 2:
        raise ConfigError(f"the data have shape {shape}, not images; use --out FILE.npy")
    pyro.set_rng_seed(seed)
    x = vae.sample(num, mean=mean)
    if suffix == ".png":
        save_image_grid(x, shape, out, nrow=nrow)
    else:
        buffer = io.BytesIO()
        np.save(buffer, x.reshape(num, *shape).numpy())
        atomic_write_bytes(out, buffer.getvalue())
    kind = "means of p(x|z)" if mean else "draws x ~ p(x|z)"
    click.echo(f"wrote {num} {kind} to {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
