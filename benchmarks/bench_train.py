"""Training throughput of pyro_vae's SVI step against a plain PyTorch loop, side by side.

    uv run python benchmarks/bench_train.py                 # about 2 minutes on 2 CPU cores

Both train the same 784-400-20 ReLU networks from the same initial weights with Adam 1e-3 on
the same dynamically binarised Fashion-MNIST batches. The plain loop computes the same
single-sample ELBO by hand: −[log p(x|z) + log p(z) − log q(z|x)] with z = μ + σε. They run in
one process, alternating batch by batch, in ``--rounds`` rounds; the table gives median images
per second and the median per-round ratio pyro_vae / plain (1.0 = as fast). A last line
times full epochs of the 60,000 training images at batch 128.

pyro_vae's step is :class:`pyro_vae.training.step.TrainingStep`, exactly what ``fit`` runs: Pyro's
``SVI`` with its ELBO of the model and guide, compiled by Pyro's ``JitTrace_ELBO`` (the default
``jit``). Both use torch's fused Adam kernel where torch has one for the device, as ``fit``
does; ``--unfused`` gives both torch's default (a loop of element-wise ops per tensor).
``--compiler inductor`` compiles pyro_vae's objective with torch.compile instead
(:class:`pyro_vae.parts.objectives.InductorTrace_ELBO`), ``--compile-plain`` the plain loop's
loss the same way; the epoch line then counts both compile times. ``--run-epochs 10`` adds a
whole 10-epoch run of each, alternated batch by batch, compiling included; with
``--empty-cache`` (and ``--batch-sizes --epochs 0``, so that nothing compiles before it) it
starts from an empty Inductor cache, as on a fresh machine.
"""

import argparse
import os
import statistics
import tempfile
import time

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import pyro_vae
from pyro_vae.io.data import binarize
from pyro_vae.training.optim import JointOptim, adam_args
from pyro_vae.training.step import TrainingStep


class PlainVAE(nn.Module):
    """The reference: the pytorch/examples VAE with pyro_vae's networks and estimator."""

    def __init__(self, vae: pyro_vae.VAE):
        super().__init__()
        self.body, self.head = vae.encoder, vae.family.head
        self.decoder = vae.decoder.net
        self.offset = vae.likelihood.offset  # the output bias's start at the data mean

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z) + self.offset
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        # No argument validation: it costs the plain loop about 70 µs a step (a support check
        # per log_prob) and breaks torch.compile's graph at its bool(); pyro_vae's compiled
        # steps run without validation too.
        log_pz = torch.distributions.Normal(0.0, 1.0, validate_args=False).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(z).sum(-1)
        return -(log_px + log_pz - log_qz).sum()


def make_pair(config: pyro_vae.Config, device: str = "cpu", fused: bool = True,
              compile_plain: bool = False):
    """A pyro_vae SVI step and a plain step on twin models with identical initial weights."""
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.from_config(config).to(device)
    twin = pyro_vae.VAE.from_config(config).to(device)
    twin.load_state_dict(vae.state_dict())
    args = adam_args(config.lr, vae) if fused else {"lr": config.lr}
    step = TrainingStep(vae, JointOptim(torch.optim.Adam, vae, args), config)
    plain = PlainVAE(twin)
    optimizer = torch.optim.Adam(plain.parameters(), **args)
    plain_loss = torch.compile(plain.loss) if compile_plain else plain.loss

    def plain_step(x):
        optimizer.zero_grad()
        loss = plain_loss(x)
        loss.backward()
        optimizer.step()
        return loss.item()

    vae.train()
    return step, plain_step


def images_per_second(step, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(b.shape[0] for b in batches) / (time.perf_counter() - start)


def paired(step_a, step_b, batches, rounds: int) -> tuple[float, float, float]:
    """Median images/s of each step and median of their per-round ratio a/b.

    Within a round the two steps alternate batch by batch (a, b, then b, a, ...), each step
    timed on its own, so a burst of load from elsewhere on the machine falls on both sides.
    """
    rates_a, rates_b, ratios = [], [], []
    images = sum(b.shape[0] for b in batches)
    for _ in range(rounds):
        seconds = {step_a: 0.0, step_b: 0.0}
        for i, batch in enumerate(batches):
            for step in (step_a, step_b) if i % 2 == 0 else (step_b, step_a):
                start = time.perf_counter()
                step(batch)
                seconds[step] += time.perf_counter() - start
        rates_a.append(images / seconds[step_a])
        rates_b.append(images / seconds[step_b])
        ratios.append(seconds[step_b] / seconds[step_a])
    return statistics.median(rates_a), statistics.median(rates_b), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--images", type=int, default=6400, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--unfused", action="store_true",
                        help="both sides use torch's default (unfused) Adam")
    parser.add_argument("--compiler", default="torchscript", choices=["torchscript", "inductor"],
                        help="what compiles pyro_vae's objective (fit's --compiler)")
    parser.add_argument("--compile-plain", action="store_true",
                        help="also compile the plain loop's loss with torch.compile")
    parser.add_argument("--run-epochs", type=int, default=0,
                        help="also time a whole run of this many epochs at batch 128")
    parser.add_argument("--empty-cache", action="store_true",
                        help="compile into a new, empty TORCHINDUCTOR_CACHE_DIR")
    args = parser.parse_args()
    if args.empty_cache and (args.batch_sizes or args.epochs):
        parser.error("--empty-cache times the --run-epochs run from an empty cache: give it with "
                     "--batch-sizes (none) --epochs 0, so that nothing compiles before")
    if args.empty_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    pair = dict(fused=not args.unfused, compile_plain=args.compile_plain)

    data = pyro_vae.load_data(pyro_vae.Config())
    x = binarize(data.train).to(args.device)
    print(f"{'batch':>6} {'pyro_vae img/s':>15} {'plain img/s':>12} {'ratio':>6}")
    for batch_size in args.batch_sizes:
        config = pyro_vae.Config(batch_size=batch_size, compiler=args.compiler).for_data(
            (28, 28), 60000)
        pyro_step, plain_step = make_pair(config, args.device, **pair)
        # Whole batches only: a smaller last one would run uncompiled under Inductor.
        batches = list(x[: args.images - args.images % batch_size].split(batch_size))
        for step in (pyro_step, plain_step):  # warm-up: allocator, tracing the objective
            images_per_second(step, batches[:10])
        a, b, ratio = paired(pyro_step, plain_step, batches, args.rounds)
        print(f"{batch_size:>6} {a:>15.0f} {b:>12.0f} {ratio:>6.2f}", flush=True)

    epoch = list(x.split(128))
    if args.run_epochs:
        # A whole run from a fresh model: the first step of each epoch validated as fit does,
        # compiling inside the timing; alternated batch by batch over the run.
        config = pyro_vae.Config(batch_size=128, compiler=args.compiler).for_data((28, 28), 60000)
        pyro_step, plain_step = make_pair(config, args.device, **pair)
        seconds = {"pyro_vae": 0.0, "plain": 0.0}
        for e in range(args.run_epochs):
            for i, batch in enumerate(epoch):
                for side in ("pyro_vae", "plain") if (i + e) % 2 == 0 else ("plain", "pyro_vae"):
                    start = time.perf_counter()
                    if side == "plain":
                        plain_step(batch)
                    else:
                        pyro_step(batch, validate=i == 0)
                    seconds[side] += time.perf_counter() - start
        cache = ("the process's TorchScript"
                 if args.compiler == "torchscript" and not args.compile_plain
                 else "an empty Inductor" if args.empty_cache
                 else "the machine's (TORCHINDUCTOR_CACHE_DIR) Inductor")
        print(f"a {args.run_epochs}-epoch run at batch 128 from {cache} compile cache: pyro_vae "
              f"{seconds['pyro_vae']:.1f} s, plain {seconds['plain']:.1f} s, ratio of speeds "
              f"{seconds['plain'] / seconds['pyro_vae']:.2f}", flush=True)

    # Whole epochs as fit runs them: a fresh model each time, the first step validated and the
    # objective traced inside the timing; the two epochs alternate batch by batch.
    ours, theirs, ratios = [], [], []
    for _ in range(args.epochs):
        config = pyro_vae.Config(batch_size=128, compiler=args.compiler).for_data((28, 28), 60000)
        pyro_step, plain_step = make_pair(config, args.device, **pair)
        first = [True]

        def fit_step(batch):
            return pyro_step(batch, validate=first.pop() if first else False)

        a, b, ratio = paired(fit_step, plain_step, epoch, rounds=1)
        ours.append(x.shape[0] / a)
        theirs.append(x.shape[0] / b)
        ratios.append(ratio)
    if not args.epochs:
        return
    print(f"one epoch of {x.shape[0]} images at batch 128 (median of {args.epochs}): pyro_vae "
          f"{statistics.median(ours):.1f} s, plain {statistics.median(theirs):.1f} s, ratio of "
          f"speeds {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
