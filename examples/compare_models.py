"""Compare the standard VAE with a better objective, priors and guide on Fashion-MNIST.

    uv run python examples/compare_models.py --out docs/comparison.md     # about 10 minutes
        --rows "IWAE bound, K = 5" "IWAE-DReG, K = 5" "VampPrior" "flow prior" "IAF guide"

Every row has the same 784-400-20 networks (the "wider networks" rows 784-400-400-40), the
same 10 epochs (``--epochs``) of dynamically binarised Fashion-MNIST at batch 128 with Adam
1e-3 (the "cosine learning rate" rows, ``--lr-schedule cosine``, run the first epoch at half
the rate, then anneal it from 1e-3 towards 0 over the others), and the same seed; only the
named part changes.
Columns: test −ELBO (single-sample, all test images); NLL, −log p(x) by importance sampling
with K = 1000 on the first 2000 test images (Burda et al. 2016), with its standard error over
images; ΔNLL, the difference to the standard VAE on the same images, with the standard error of
that paired difference (negative: better than the standard VAE); active units
(Cov_x E[z_u|x] > 0.01); the share of 200 test images whose importance weights have Pareto
k̂ > 0.7 (Yao et al. 2018); training time.
"""

import argparse
import re
import time
from pathlib import Path

import numpy as np

import pyro

import pyro_vae
from pyro_vae.io.data import binarize_fixed
from pyro_vae.evaluation.diagnostics import pareto_khat
from pyro_vae.evaluation.evaluate import evaluate

ROWS = [
    ("standard VAE", "(defaults)", {}),
    ("IWAE bound, K = 5", "--elbo iwae --particles 5", dict(elbo="iwae", particles=5)),
    ("IWAE-DReG, K = 5", "--elbo iwae-dreg --particles 5", dict(elbo="iwae-dreg", particles=5)),
    ("VampPrior", "--prior vamp", dict(prior="vamp")),
    ("flow prior", "--prior flow", dict(prior="flow")),
    ("IAF guide", "--guide iaf", dict(guide="iaf")),
    ("two layers, IWAE K = 5", "--latent-layers 2 --elbo iwae --particles 5",
     dict(latent_layers=2, elbo="iwae", particles=5)),
    ("two layers, flow prior, IWAE K = 5",
     "--latent-layers 2 --prior flow --elbo iwae --particles 5",
     dict(latent_layers=2, prior="flow", elbo="iwae", particles=5)),
    ("VampPrior, IWAE-DReG K = 5", "--prior vamp --elbo iwae-dreg --particles 5",
     dict(prior="vamp", elbo="iwae-dreg", particles=5)),
    ("two layers, IWAE-DReG K = 5", "--latent-layers 2 --elbo iwae-dreg --particles 5",
     dict(latent_layers=2, elbo="iwae-dreg", particles=5)),
    ("two layers, VampPrior, IWAE K = 5",
     "--latent-layers 2 --prior vamp --elbo iwae --particles 5",
     dict(latent_layers=2, prior="vamp", elbo="iwae", particles=5)),
    ("VampPrior, IWAE-DReG K = 5, wider networks",
     "--prior vamp --elbo iwae-dreg --particles 5 --hidden 400 --hidden 400 --z-dim 40",
     dict(prior="vamp", elbo="iwae-dreg", particles=5, hidden=(400, 400), z_dim=40)),
    ("standard VAE, wider networks", "--hidden 400 --hidden 400 --z-dim 40",
     dict(hidden=(400, 400), z_dim=40)),
    ("standard VAE, cosine learning rate", "--lr-schedule cosine",
     dict(lr_schedule="cosine")),
    ("standard VAE, wider networks, cosine learning rate",
     "--hidden 400 --hidden 400 --z-dim 40 --lr-schedule cosine",
     dict(hidden=(400, 400), z_dim=40, lr_schedule="cosine")),
    ("VampPrior, IWAE-DReG K = 5, wider networks, cosine learning rate",
     "--prior vamp --elbo iwae-dreg --particles 5 --hidden 400 --hidden 400 --z-dim 40 "
     "--lr-schedule cosine",
     dict(prior="vamp", elbo="iwae-dreg", particles=5, hidden=(400, 400), z_dim=40,
          lr_schedule="cosine")),
    ("VampPrior, IWAE-DReG K = 10, wider networks, cosine learning rate",
     "--prior vamp --elbo iwae-dreg --particles 10 --hidden 400 --hidden 400 --z-dim 40 "
     "--lr-schedule cosine",
     dict(prior="vamp", elbo="iwae-dreg", particles=10, hidden=(400, 400), z_dim=40,
          lr_schedule="cosine")),
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--limit", type=int, help="training images (default: all 60,000)")
parser.add_argument("--eval-images", type=int, default=2000)
parser.add_argument("--iwae-samples", type=int, default=1000)
parser.add_argument("--khat-images", type=int, default=200)
parser.add_argument("--out", help="also write the Markdown table to this file")
parser.add_argument("--cache", type=Path, metavar="DIR",
                    help="keep each row's table line and per-image NLL in DIR and reuse them "
                    "on the next run (rows are deterministic: same seed, same data)")
parser.add_argument("--rows", nargs="+", metavar="MODEL",
                    help="only these rows, by name (the standard VAE, the reference of ΔNLL, "
                    "always runs)")
args = parser.parse_args()

config = pyro_vae.Config(epochs=args.epochs, limit=args.limit)
data = pyro_vae.load_data(config)
test = binarize_fixed(data.test)

lines = [
    f"| model | flags | test −ELBO | NLL (K = {args.iwae_samples}) | ΔNLL | active units | k̂ > 0.7 | training |",
    "|---|---|---|---|---|---|---|---|",
]
baseline = None
chosen = [row for row in ROWS if row is ROWS[0] or args.rows is None or row[0] in args.rows]
unknown = set(args.rows or ()) - {row[0] for row in ROWS}
if unknown:
    parser.error(f"unknown rows {sorted(unknown)}; choose from {[row[0] for row in ROWS]}")

def run_row(name, flags, options):
    """Train and evaluate one row: (its table cells after ΔNLL's, per-image NLL)."""
    started = time.perf_counter()
    vae, metrics = pyro_vae.fit(config, data=data, progress=False, **options)
    seconds = time.perf_counter() - started
    pyro.set_rng_seed(0)
    figures = evaluate(vae, test[: args.eval_images], iwae_samples=args.iwae_samples,
                       progress=False)
    khat = pareto_khat(vae, test[: args.khat_images])
    units = figures["active_units"]
    total = sum(getattr(vae, "layer_dims", (vae.z_dim,)))  # every stochastic layer's units
    cells = dict(elbo=f"{metrics[-1]['test_neg_elbo']:.2f}",
                 nll=f"{figures['nll']:.2f} ± {figures['nll_stderr']:.2f}",
                 units=f"{units} / {total}", khat=f"{(khat > 0.7).mean():.0%}",
                 seconds=f"{seconds:.0f} s")
    return cells, figures["nll_per_image"].cpu().numpy()


for name, flags, options in chosen:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    stored = args.cache / f"{slug}-{args.epochs}-epochs.npz" if args.cache else None
    settings = f"limit={args.limit} eval_images={args.eval_images} K={args.iwae_samples} " \
               f"khat_images={args.khat_images}"
    default = "limit=None eval_images=2000 K=1000 khat_images=200"
    if stored is not None and stored.exists() and str(
            np.load(stored).get("settings", default)) == settings:
        saved = np.load(stored)
        cells = {k: str(saved[k]) for k in saved.files if k not in ("per_image", "settings")}
        per_image = saved["per_image"]
    else:
        cells, per_image = run_row(name, flags, options)
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            np.savez(stored, per_image=per_image, settings=settings, **cells)
    if baseline is None:
        baseline, delta = per_image, "—"
    else:
        diff = per_image - baseline
        delta = f"{diff.mean():+.2f} ± {diff.std() / len(diff) ** 0.5:.2f}"
    lines.append(
        f"| {name} | {flags if flags.startswith('(') else f'`{flags}`'} | {cells['elbo']} | "
        f"{cells['nll']} | {delta} | {cells['units']} | {cells['khat']} | {cells['seconds']} |"
    )
    print(lines[-1], flush=True)

table = "\n".join(lines) + "\n"
print()
print(table)
if args.out:
    with open(args.out, "w") as f:
        f.write(table)
