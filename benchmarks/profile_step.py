"""Where a training step's time goes: pyro_vae's step with and without its parts, and profiles.

    python benchmarks/profile_step.py --device cuda     # about 1 minute on one GPU
    uv run python benchmarks/profile_step.py            # the CPU, batch 128 only

Paired against the plain PyTorch loop of ``bench_train.py`` (same networks, weights, batches):
the step as ``fit`` runs it (compiled, ``jit``), uncompiled (``eager``), and compiled with
:class:`~pyro_vae.training.optim.JointOptim`'s check for non-finite gradients taken out
(``jit-nocheck``, a measurement only: ``fit`` never skips the check). Then ``torch.profiler``
tables of 20 steps of each, by self CPU time: kernel launches, synchronisations
(``_local_scalar_dense``, ``cudaMemcpyAsync``) and the ops. ``benchmarks/results/gpu/probe.log``
holds its output on an H200.
"""

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train as b  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.io.data import binarize  # noqa: E402
from pyro_vae.training import optim  # noqa: E402


def _without_check(self, params, *args, **kwargs):
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.skipped = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = pyro_vae.load_data(pyro_vae.Config())
    x = binarize(data.train).to(args.device)
    checked = optim.JointOptim.__call__
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device == "cuda" else [])
    for bs in (128, 512) if args.device == "cuda" else (128,):
        batches = list(x[:25600].split(bs))
        for name, jit, check in (("jit", True, True), ("eager", False, True),
                                 ("jit-nocheck", True, False)):
            optim.JointOptim.__call__ = checked if check else _without_check
            config = pyro_vae.Config(batch_size=bs, jit=jit).for_data((28, 28), 60000)
            ours, plain = b.make_pair(config, args.device)
            for step in (ours, plain):
                b.images_per_second(step, batches[:10])
            a, c, r = b.paired(ours, plain, batches, args.rounds)
            print(f"{bs} {name}: ours {a:.0f} plain {c:.0f} ratio {r:.2f}", flush=True)
        optim.JointOptim.__call__ = checked
        config = pyro_vae.Config(batch_size=bs).for_data((28, 28), 60000)
        ours, plain = b.make_pair(config, args.device)
        b.images_per_second(ours, batches[:10])
        for step, rows in ((ours, 18), (plain, 12)):
            with profile(activities=activities) as prof:
                for batch in batches[:20]:
                    step(batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows),
                  flush=True)


if __name__ == "__main__":
    main()
