"""Signal-to-noise ratio of the encoder's gradient: IWAE against IWAE-DReG as K grows.

    uv run python benchmarks/bench_dreg_snr.py      # about 5 minutes on 2 CPU cores

Rainforth et al. (2018, Fig. 1 and Theorem 1) show that the IWAE bound's gradient for the
inference network has a signal-to-noise ratio that falls as O(1/√K) with the K importance
samples for one data point; that of the doubly-reparameterised estimator of Tucker et al.
(2019) grows instead, as O(√K) (``tests/test_dreg.py`` checks both on a linear Gaussian model).
This measures both on a real model: the default 784-400-20 VAE after ``--epochs`` epochs of
``--elbo iwae --particles 5`` on Fashion-MNIST, on a fixed batch of ``--images`` test images.
For each K and estimator it draws the gradient of the bound ``--repeats`` times (fresh samples
of z each time, same images and weights) and, for every encoder parameter (the network and the
Gaussian head), SNR = |mean| / standard deviation over the draws; it reports the median over
the parameters, and the same for the decoder, whose gradient both estimators share. Writes
``--figure`` (log-log SNR against K) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import RenyiELBO  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae import Config  # noqa: E402
from pyro_vae.io.data import binarize_fixed, load_data  # noqa: E402
from pyro_vae.parts.objectives import DReGIWAE_ELBO  # noqa: E402


def gradients(vae, elbo, x, repeats: int) -> dict[str, torch.Tensor]:
    """{part: (repeats, parameters)} gradients of the bound (nats per image) for the encoder
    and the decoder."""
    parts = {"encoder": [p for n, p in vae.named_parameters()
                         if n.startswith(("encoder.", "family."))],
             "decoder": [p for n, p in vae.named_parameters() if n.startswith("decoder.")]}
    draws = {part: [] for part in parts}
    for seed in range(repeats):
        pyro.set_rng_seed(seed)
        vae.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, x)  # −bound summed over the images
        for part, params in parts.items():
            draws[part].append(torch.cat([-p.grad.flatten() / x.shape[0] for p in params]))
    return {part: torch.stack(d) for part, d in draws.items()}


def snr(draws: torch.Tensor) -> float:
    """Median over parameters of |mean| / sd over the draws (parameters with a zero gradient,
    e.g. behind a dead ReLU, left out)."""
    sd = draws.std(0)
    keep = sd > 0
    return float((draws.mean(0)[keep].abs() / sd[keep]).median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--figure", default="docs/images/dreg-snr.png")
    parser.add_argument("--json", default="benchmarks/results/dreg_snr.json")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_data(Config())
    result = pyro_vae.fit(data=data, elbo="iwae", particles=5, epochs=args.epochs, seed=0,
                          progress=False)
    vae = result.model
    x = binarize_fixed(data.test[:args.images]).float().flatten(1)
    rows = []
    for k in args.ks:
        kwargs = dict(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
        row = {"k": k}
        for name, elbo in (("iwae", RenyiELBO(alpha=0.0, **kwargs)),
                           ("dreg", DReGIWAE_ELBO(**kwargs))):
            draws = gradients(vae, elbo, x, args.repeats)
            row[f"{name}_encoder"], row[f"{name}_decoder"] = (snr(draws["encoder"]),
                                                              snr(draws["decoder"]))
        rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    with open(args.json, "w") as f:
        json.dump({"epochs": args.epochs, "images": args.images, "repeats": args.repeats,
                   "test_neg_elbo": result.metrics[-1]["test_neg_elbo"], "rows": rows}, f,
                  indent=1)
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.loglog(ks, [r["iwae_encoder"] for r in rows], "o-", label="encoder, IWAE")
    ax.loglog(ks, [r["dreg_encoder"] for r in rows], "s-", label="encoder, IWAE-DReG")
    ax.loglog(ks, [r["iwae_decoder"] for r in rows], "--", color="grey",
              label="decoder (both)")
    ax.set_xlabel("importance samples K")
    ax.set_ylabel("gradient SNR (median |mean|/sd)")
    ax.set_title(f"Fashion-MNIST VAE, {args.images} images, {args.repeats} draws")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.figure)
    slope = {name: statistics.linear_regression(
        [math.log(k) for k in ks], [math.log(r[f"{name}_encoder"]) for r in rows]).slope
        for name in ("iwae", "dreg")}
    print(f"encoder SNR ∝ K^{slope['iwae']:.2f} (IWAE), K^{slope['dreg']:.2f} (DReG); "
          f"wrote {args.figure} and {args.json} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
