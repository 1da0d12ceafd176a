"""One SVI step: Pyro's ELBO of the model and guide, its gradient, one optimiser step."""

from __future__ import annotations

import contextlib
import functools
import warnings

import pyro
import torch
from pyro.infer import SVI

from ..config import Config
from ..model import VAE
from ..parts.corruption import parse_corruption
from ..parts.objectives import build_elbo, jit_unsupported
from . import distributed


def regularisers(config: Config) -> dict:
    """The training-only keyword arguments of the model and guide that ``config`` asks for:
    ``corruption`` (``--corrupt``) and ``contractive`` (``--contractive``)."""
    train, extra = config.train, {}
    if train.corrupt is not None:
        extra["corruption"] = parse_corruption(train.corrupt)
    if train.contractive:
        extra["contractive"] = train.contractive
    return extra


class TrainingStep:
    """One SVI step on a batch: Pyro's ELBO of ``vae.model`` and ``vae.guide``, its gradient,
    and one step of ``optim``.

    Steps called with ``validate=True`` (the plan does so on the first step of every epoch)
    run the uncompiled objective with Pyro's validation on, so every distribution's parameters
    and values are checked. The others run the compiled objective (:func:`build_elbo` with
    ``jit=True``) where ``config.train.jit`` allows it, and the uncompiled one otherwise. Both
    give the same numbers from the same random stream: Pyro records a new trace for each new
    batch size by running the objective a few times, and that happens here on a copy of the
    random state, so compiling consumes none of it. Under ``--compiler inductor``, whose
    compiling of a new batch size costs seconds (one Inductor graph per shape), only the run's
    batch size (``config.train.batch_size``) is compiled: the epoch's last, smaller batch runs
    the uncompiled objective, one step per epoch.

    Parameters
    ----------
    vae : VAE
        The model.
    optim : pyro.optim.PyroOptim
        Its optimiser, e.g. :class:`~pyro_vae.training.optim.JointOptim`.
    config : Config
        Gives the objective, particles, ``jit`` and ``precision`` (``"bf16"``: the model and
        guide run under bf16 autocast, :func:`autocast`).
    regularisers : dict
        Keyword arguments of the model and guide for training only (``corruption``,
        ``contractive``).

    Calling it with a batch (batch, D), the KL weight (a 0-d tensor, or None for none) and the
    batch's conditions ``y`` (labels or covariates of a conditional model; None for the
    semi-supervised model's unlabelled batches, whose class is summed out) returns the loss,
    −ELBO summed over the batch, in nats. For the labelled batches of the semi-supervised model
    the loss includes the classification term α·log q(y|x) (``--classifier-weight``).
    """

    def __init__(self, vae: VAE, optim, config: Config, regularisers: dict | None = None):
        # In bf16 the model and guide run under autocast; the ELBO's log-densities (Pyro
        # scores the traces after running them) and the backward pass run outside it.
        program = in_bf16 if config.train.precision == "bf16" else (lambda fn: fn)
        self.svi = SVI(program(vae.model), program(vae.guide), optim, build_elbo(config))
        self.kwargs = regularisers or {}
        self.classifier = ({"classifier_weight": config.train.classifier_weight}
                           if config.model.semi_supervised else {})
        self.compiled = self._compiled_elbo = None
        jit = config.train.jit
        # Your own networks are compiled only when asked for: a trace freezes any Python
        # control flow that depends on the data.
        automatic = not config.model.user_built and jit_unsupported(config) is None
        if jit or (jit is None and automatic):
            self._compiled_elbo = build_elbo(config, jit=True)
            self.compiled = SVI(vae.model, vae.guide, optim, self._compiled_elbo)
        self._traced: set[tuple[int, int]] = set()
        # The one batch size Inductor compiles (None: every size, as TorchScript traces).
        self._compiled_size = (config.train.batch_size if config.train.compiler == "inductor"
                               else None)

    def __call__(self, batch: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None,
                 validate: bool = False) -> float:
        args, kwargs = step_arguments(batch, kl_weight, y), {**self.kwargs, **self.classifier}
        with warnings.catch_warnings():
            # A labelled batch has no site to enumerate: TraceEnum_ELBO is Trace_ELBO there.
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
            uncompiled = (self._compiled_size is not None
                          and batch.shape[0] != self._compiled_size)
            if validate or self.compiled is None or uncompiled:
                with pyro.validation_enabled(validate):
                    return self.svi.step(*args, **kwargs)
            # The plain interpreter runs the recorded graph, and autograd differentiates it as
            # it does eager code: TorchScript's optimising executor is slower for these graphs.
            with pyro.validation_enabled(False), torch.jit.optimized_execution(False):
                if (batch.shape[0], len(args)) not in self._traced:
                    self._trace(args, kwargs)
                return self.compiled.step(*args, num=batch.shape[0], **kwargs)

    def _trace(self, args: tuple, kwargs: dict | None = None) -> None:
        """Record the objective for this batch size and these arguments (the batch, and the KL
        weight where a schedule sets one, and the conditions), with the keyword arguments of
        the step (default: the regularisers), on a copy of the random state."""
        kwargs = {**self.kwargs, **self.classifier} if kwargs is None else kwargs
        batch = args[0]
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # torch 2.9+ announces the end of TorchScript; Pyro's JIT objectives still use it.
            warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=FutureWarning)
            # SVI's own bound methods: Pyro keys its traces on the model's and guide's ids.
            self._compiled_elbo.differentiable_loss(
                self.compiled.model, self.compiled.guide, *args, num=batch.shape[0], **kwargs)
        self._traced.add((batch.shape[0], len(args)))


@contextlib.contextmanager
def autocast(bf16: bool, device: torch.device):
    """For ``--precision bf16`` (``bf16=True``): ``torch.autocast`` to bfloat16 on
    ``device`` (its ``.type`` is used: ``cpu`` or ``cuda``), with every module's bf16 output
    handed on in float32; with ``bf16=False``, nothing (an autocast outside stays as it is).
    Yields None.

    So the matrix products and convolutions of the networks run in bf16 while activations,
    every distribution's parameters and every log-density (the likelihood, the prior, the
    guide's density and its log-determinants) are float32, as mixed-precision training
    prescribes (Micikevicius et al. 2018, §3); weights and gradients stay float32. Without the
    cast back, the continuous Bernoulli's normaliser (delicate near p = 1/2) lost 0.9 nats per
    image on a batch of Fashion-MNIST.

    The cast is a global module forward hook, so while the context is open it applies to every
    module of the process, in every thread; it casts outputs that are tensors (not tuples of
    them), and ops outside modules keep autocast's dtypes. The hook is removed on leaving,
    also when an exception leaves the context. Raises what ``torch.autocast`` raises for a
    device type without bf16 autocast.
    """
    if not bf16:
        yield
        return

    def to_float32(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
            return output.float()
        return None

    hook = torch.nn.modules.module.register_module_forward_hook(to_float32)
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    finally:
        hook.remove()


def in_bf16(program):
    """The Pyro program ``program(x, ...)`` (a model or guide) run under :func:`autocast` on
    ``x``'s device: what ``--precision bf16`` trains. Pyro computes the ELBO's log-densities
    after running the programs, so they, and the backward pass, run outside autocast."""

    @functools.wraps(program)
    def run(x, *args, **kwargs):
        with autocast(True, x.device):
            return program(x, *args, **kwargs)

    return run


def step_arguments(batch: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None) -> tuple:
    """The positional arguments of the model and guide for one step, tensors only (the
    compiled objective takes no None): (x), (x, kl_weight), or with conditions
    (x, kl_weight, y), the weight then 1 where no schedule sets one."""
    if y is None:
        return (batch,) if kl_weight is None else (batch, kl_weight)
    if kl_weight is None:
        kl_weight = torch.ones((), device=batch.device)
    return batch, kl_weight, y


class DistributedStep:
    """A training step under DistributedDataParallel: Pyro's −ELBO of this rank's batch
    through the DDP wrapper, gradients averaged over ranks, one joint optimiser step.

    Uncompiled: DDP needs ``differentiable_loss``, and ``JitTrace_ELBO``'s (pyro 1.9) adds the
    loss's own gradient to the surrogate's, doubling it. With ``--precision bf16`` the forward
    pass (model, guide and ELBO) runs under :func:`autocast`, the backward pass outside it.
    """

    def __init__(self, vae: VAE, optim, config: Config, regularisers: dict, cluster,
                 device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.vae, self.optim, self.world = vae, optim, cluster.world
        self.bf16 = config.train.precision == "bf16"
        if config.model.semi_supervised:
            regularisers = {**regularisers, "classifier_weight": config.train.classifier_weight}
        loss = distributed.ELBOLoss(vae, build_elbo(config), cluster.world, regularisers)
        # The semi-supervised model's labelled batches leave the classifier unused when α = 0.
        self.ddp = DistributedDataParallel(
            loss, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=config.model.semi_supervised)

    def __call__(self, batch: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None,
                 validate: bool = False) -> float:
        args = step_arguments(batch, kl_weight, y)
        with (pyro.validation_enabled(validate), warnings.catch_warnings(),
              autocast(self.bf16, batch.device)):
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
            loss = self.ddp(*args)
        loss.backward()
        self.optim(list(self.vae.parameters()))
        return loss.item() / self.world
