"""``--precision bf16``: what it buys in training speed and what it costs in nats, side by side.

    uv run python benchmarks/bench_amp.py               # about 3 minutes on 2 CPU cores
    python benchmarks/bench_amp.py --device cuda        # about 1 minute on one GPU

pyro_vae's training step (:class:`pyro_vae.training.step.TrainingStep`, what ``fit`` runs) in
float32 as ``fit`` runs it by default (compiled with ``JitTrace_ELBO``; ``--no-jit``: eager)
against the same step with ``precision="bf16"`` (the model and guide under bf16 autocast,
:func:`pyro_vae.training.step.autocast`, uncompiled), on twin models from the same initial
weights, alternating batch by batch as in ``bench_train.py``; then the bf16 step against the
plain float32 PyTorch loop of ``bench_train.py``. Images per second and the ratios. Then one
model is trained ``--epochs`` epochs in float32 and its test −ELBO and importance-sampled
−log p(x) (K = ``--k``) are computed in float32 and under the bf16 step's autocast from the
same random numbers: the difference is what bf16 costs in nats per image (the issue's bar:
0.1 nats).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.evaluation.evaluate import evaluate  # noqa: E402
from pyro_vae.io.data import binarize, binarize_fixed  # noqa: E402
from pyro_vae.training.step import autocast  # noqa: E402


def figures(vae, x, k: int, device, bf16: bool) -> dict:
    """``neg_elbo`` and ``nll`` (K = ``k``) of the images ``x`` (N, 784), nats per image, from
    seed 0, in float32 or (``bf16``) under the bf16 step's :func:`autocast`."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(0)
    with autocast(bf16, device):
        result = evaluate(vae, x, iwae_samples=k, batch_size=500, progress=False)
    return {"neg_elbo": result["neg_elbo"], "nll": result["nll"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 4096])
    parser.add_argument("--images", type=int, default=12800, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="float32 training epochs")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                        help="the float32 step compiled with JitTrace_ELBO, as fit runs it")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    data = pyro_vae.load_data(pyro_vae.Config())
    x = binarize(data.train).to(device)
    print(f"{'batch':>6} {'float32 img/s':>14} {'bf16 img/s':>11} {'bf16/fp32':>10} "
          f"{'plain fp32 img/s':>17} {'bf16/plain':>11}")
    for batch_size in args.batch_sizes:
        config = pyro_vae.Config(batch_size=batch_size, jit=args.jit).for_data((28, 28), 60000)
        fp32, _ = bench_train.make_pair(config, args.device)
        bf16, plain = bench_train.make_pair(config.replace(precision="bf16", jit=None),
                                            args.device)
        batches = list(x[: args.images].split(batch_size))
        for step in (fp32, bf16, plain):
            bench_train.images_per_second(step, batches[:10])
        a, b, ratio = bench_train.paired(bf16, fp32, batches, args.rounds)
        _, c, to_plain = bench_train.paired(bf16, plain, batches, args.rounds)
        print(f"{batch_size:>6} {b:>14.0f} {a:>11.0f} {ratio:>10.2f} {c:>17.0f} {to_plain:>11.2f}",
              flush=True)

    config = pyro_vae.Config(batch_size=128).for_data((28, 28), 60000)
    step, _ = bench_train.make_pair(config, args.device)
    vae = step.svi.model.__self__
    for _ in range(args.epochs):
        for batch in binarize(data.train).to(device)[torch.randperm(60000, device=device)].split(128):
            step(batch)
    vae.eval()
    test = binarize_fixed(data.test).to(device)
    f32, b16 = (figures(vae, test, args.k, device, bf16) for bf16 in (False, True))
    print(f"after {args.epochs} float32 epochs, {test.shape[0]} test images, K = {args.k}: "
          f"−ELBO {f32['neg_elbo']:.3f} (float32) vs {b16['neg_elbo']:.3f} (bf16), "
          f"−log p(x) {f32['nll']:.3f} vs {b16['nll']:.3f}; differences "
          f"{b16['neg_elbo'] - f32['neg_elbo']:+.3f} and {b16['nll'] - f32['nll']:+.3f} nats "
          "per image")


if __name__ == "__main__":
    main()
