"""bf16 autocast: what it buys in training speed and what it costs in nats, side by side.

    python benchmarks/bench_amp.py --device cuda        # about 1 minute on one GPU

pyro_vae's training step (:class:`pyro_vae.training.step.TrainingStep`, what ``fit`` runs) is
run twice on twin models from the same initial weights: in float32, and with its model and
guide under ``torch.autocast(dtype=torch.bfloat16)`` (the networks' matrix products in bf16,
the densities in whatever dtype the networks hand them). They alternate batch by batch as in
``bench_train.py``; the table gives images per second and the ratio bf16 / float32. Then one
model is trained ``--epochs`` epochs in float32 and its test −ELBO and importance-sampled
−log p(x) (K = ``--k``) are computed in float32 and under autocast from the same random
numbers: the difference is what bf16 costs in nats per image (the issue's bar: 0.1 nats).
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


def autocast(step, device_type: str):
    """``step`` run under bf16 autocast."""
    def run(batch, **kwargs):
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return step(batch, **kwargs)
    return run


def figures(vae, x, k: int, device, bf16: bool) -> dict:
    """Test figures from a fixed seed, in float32 or under bf16 autocast."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(0)
    context = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
               else torch.autocast(device_type=device.type, enabled=False))
    with context:
        result = evaluate(vae, x, iwae_samples=k, batch_size=500, progress=False)
    return {"neg_elbo": result["neg_elbo"], "nll": result["nll"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 4096])
    parser.add_argument("--images", type=int, default=12800, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="float32 training epochs")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                        help="compile the ELBO with JitTrace_ELBO (default: eager)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    data = pyro_vae.load_data(pyro_vae.Config())
    x = binarize(data.train).to(device)
    print(f"{'batch':>6} {'float32 img/s':>14} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for batch_size in args.batch_sizes:
        config = pyro_vae.Config(batch_size=batch_size, jit=args.jit).for_data((28, 28), 60000)
        fp32, _ = bench_train.make_pair(config, args.device)
        bf16, _ = bench_train.make_pair(config, args.device)
        bf16 = autocast(bf16, device.type)
        batches = list(x[: args.images].split(batch_size))
        for step in (fp32, bf16):
            bench_train.images_per_second(step, batches[:10])
        a, b, ratio = bench_train.paired(bf16, fp32, batches, args.rounds)
        print(f"{batch_size:>6} {b:>14.0f} {a:>11.0f} {ratio:>10.2f}", flush=True)

    config = pyro_vae.Config(batch_size=128, jit=args.jit).for_data((28, 28), 60000)
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
