"""Importance-sampled log-likelihood: pyro_vae.evaluate against a plain PyTorch estimator.

    uv run python benchmarks/bench_evaluate.py          # about 1 minute on 2 CPU cores

Both estimate log p(x) ≈ log (1/K) Σ_k p(x, z_k)/q(z_k|x) for the same 784-400-20 model and
binarised Fashion-MNIST test images, in the same chunks of samples; the plain version writes
the Bernoulli, Normal and Gaussian-guide densities by hand. Throughput is image-samples per
second, medians over ``--repeats`` pairs of runs in alternating order, and the median of the
per-pair ratios. Peak memory (maximum resident set size; with ``--device cuda`` the peak of
torch's CUDA allocator) is measured in a fresh process per estimator and K, so the figures at
K = 1000 and K = 5000 show whether memory grows with K.

    python benchmarks/bench_evaluate.py --device cuda --images 2000   # on a GPU
"""

import argparse
import math
import statistics
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae.io.data import binarize_fixed
from pyro_vae.evaluation.evaluate import default_chunk, evaluate

BATCH = 100


def model_and_data(images: int, device: str = "cpu"):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.from_config(pyro_vae.Config(data_shape=(28, 28))).eval().to(device)
    data = pyro_vae.load_data(pyro_vae.Config(limit=max(1000, images)))
    return vae, binarize_fixed(data.test[:images]).to(device)


@torch.no_grad()
def plain_nll(vae, x: torch.Tensor, k: int) -> float:
    """The same estimator in plain PyTorch, with the same batches and chunks."""
    body, head, decoder = vae.encoder, vae.family.head, vae.decoder.net
    offset = vae.likelihood.offset  # the output bias's start at the data mean
    chunk, total = default_chunk(vae, BATCH, x.shape[-1]), 0.0
    unchecked = dict(validate_args=False)  # as pyro_vae's evaluation: data checked once
    for xb in x.split(BATCH):
        loc, log_var = head(body(xb)).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        running = torch.full((xb.shape[0],), -math.inf, device=xb.device)
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            z = loc + scale * torch.randn(n, *loc.shape, device=loc.device)
            log_lik = -F.binary_cross_entropy_with_logits(
                decoder(z) + offset, xb.expand(n, *xb.shape), reduction="none").sum(-1)
            log_prior = torch.distributions.Normal(0.0, 1.0, **unchecked).log_prob(z).sum(-1)
            log_q = torch.distributions.Normal(loc, scale, **unchecked).log_prob(z).sum(-1)
            running = torch.logaddexp(running, (log_lik + log_prior - log_q).logsumexp(0))
        total -= float((running - math.log(k)).sum())
    return total / x.shape[0]


def ours_nll(vae, x, k) -> float:
    return evaluate(vae, x, iwae_samples=k, batch_size=BATCH, progress=False)["nll"]


def peak_memory(which: str, k: int, images: int, device: str = "cpu") -> float:
    """Peak memory in MiB of a fresh process that runs one estimate: its maximum resident set
    size on the CPU, the CUDA allocator's peak on a GPU."""
    peak = ("import torch; print(torch.cuda.max_memory_allocated() * 1024 / 2**20)"
            if device.startswith("cuda") else
            "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    code = (f"import sys; sys.path.insert(0, 'benchmarks'); import bench_evaluate as b; "
            f"vae, x = b.model_and_data({images}, {device!r}); b.{which}_nll(vae, x, {k}); "
            + peak)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    vae, x = model_and_data(args.images, args.device)
    work = args.images * args.k
    for fn in (ours_nll, plain_nll):  # warm-up
        fn(vae, x[:BATCH], 100)
    times, ratios = {"ours": [], "plain": []}, []
    for r in range(args.repeats):  # alternating order, a ratio per repeat
        order = (("ours", ours_nll), ("plain", plain_nll))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn(vae, x, args.k)
            times[name].append(time.perf_counter() - start)
        ratios.append(times["plain"][-1] / times["ours"][-1])
    ours, plain = (work / statistics.median(times[n]) for n in ("ours", "plain"))
    print(f"throughput on {args.device} (image-samples/s, K = {args.k}): pyro_vae {ours:.0f}, "
          f"plain {plain:.0f}, median of the per-repeat ratios {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f} to {max(ratios):.2f})")
    for k in (1000, 5000):
        mib = {which: peak_memory(which, k, args.images, args.device)
               for which in ("ours", "plain")}
        print(f"peak memory at K = {k}: pyro_vae {mib['ours']:.0f} MiB, "
              f"plain {mib['plain']:.0f} MiB")


if __name__ == "__main__":
    main()
