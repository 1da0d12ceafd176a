"""Conditional VAEs and the semi-supervised M2 model: sites, the enumerated objective against
its sum over classes, every parameter training, class-summed evaluation against a closed form,
labels kept and hidden, pictures, reload, compiled and resumed runs."""

import importlib.util
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_vae import VAE, Config, ConfigError, DataError, fit, load
from pyro_vae.evaluation.evaluate import evaluate
from pyro_vae.evaluation.pictures import analogies_grid, class_rows
from pyro_vae.io.data import Data, binarize_fixed, hide_labels
from pyro_vae.parts.objectives import build_elbo
from pyro_vae.registry import FAMILIES, NETWORKS, PRIORS
from pyro_vae.training.optim import JointOptim

K = 3


def _m2(**options) -> VAE:
    pyro.set_rng_seed(0)
    options.setdefault("hidden", (16,))
    config = Config(labelled=30, z_dim=2, data_shape=(28, 28), num_classes=K, **options)
    return VAE.from_config(config.for_data((28, 28), 100))


def test_the_guide_enumerates_the_class_and_the_model_observes_it_where_given(fmnist_small):
    vae = _m2()
    x = binarize_fixed(fmnist_small.train[:5])
    guide = poutine.trace(vae.guide).get_trace(x)
    assert guide.nodes["y"]["infer"] == {"enumerate": "parallel"}
    assert guide.nodes["z"]["value"].shape == (5, 2)  # sampled, not enumerated, by trace
    y = torch.tensor([0, 1, 2, 0, 1])
    labelled = poutine.trace(vae.guide).get_trace(x, None, y)
    assert "y" not in labelled.nodes  # a given class needs no q(y|x) site
    model = poutine.trace(poutine.replay(vae.model, trace=labelled)).get_trace(x, None, y)
    assert model.nodes["y"]["is_observed"] and torch.equal(model.nodes["y"]["value"], y)
    assert model.nodes["x"]["fn"].event_shape == (784,)


def _by_hand(vae: VAE, x: torch.Tensor, y=None, alpha=0.0) -> float:
    """−ELBO summed over x, computed class by class (Kingma et al. 2014, eq. 6–9), for a
    point-mass guide: no sampling, so the objective is exact."""
    log_py = -math.log(K)

    def elbo(k):  # log p(x|z, k) + log p(z) + log p(k), z = f(x, k); log q(z|x, k) = 0
        z = vae.encode(x, k)[0]
        params = vae.decoder_params(z, vae.condition_vector(k))
        return vae.observation(params).log_prob(x) + vae.prior().log_prob(z) + log_py

    if y is not None:
        q = torch.log_softmax(vae.classifier(x), -1).gather(1, y[:, None]).squeeze(1)
        return -float((elbo(y) + alpha * q).sum())
    q = vae.classify(x)
    per_class = torch.stack([elbo(torch.full((x.shape[0],), k)) for k in range(K)], -1)
    unlabelled = (q * per_class).sum(-1) - (q * q.log()).sum(-1)  # U(x), eq. 7
    return -float(unlabelled.sum())


def test_the_enumerated_objective_is_the_sum_over_classes(fmnist_small):
    vae = _m2(guide="delta")
    x = binarize_fixed(fmnist_small.train[:5])
    y = torch.tensor([2, 0, 1, 1, 0])
    with torch.no_grad():
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
        labelled = Trace_ELBO().loss(vae.model, vae.guide, x, None, y, classifier_weight=7.0)
        assert loss == pytest.approx(_by_hand(vae, x), rel=1e-5)
        assert labelled == pytest.approx(_by_hand(vae, x, y, alpha=7.0), rel=1e-5)


CONDITIONED = [
    *[dict(labelled=30, prior=p) for p in sorted(PRIORS) if p not in ("vamp", "none")],
    *[dict(labelled=30, guide=g) for g in sorted(FAMILIES)],
    *[dict(labelled=30, arch=a) for a in sorted(NETWORKS)],
    dict(labelled=30, particles=3), dict(labelled=30, kl_warmup=2, likelihood="categorical"),
    dict(labelled=30, corrupt="mask:0.3", likelihood="continuous-bernoulli"),
    *[dict(condition="label", arch=a) for a in sorted(NETWORKS)],
    dict(condition="label", contractive=0.1), dict(condition="label", elbo="iwae", particles=3),
    dict(condition="label", elbo="meanfield", likelihood="normal-learned"),
]


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")  # labelled step
@pytest.mark.parametrize("options", CONDITIONED, ids=lambda o: ",".join(
    f"{k}={v}" for k, v in o.items()))
def test_one_svi_step_each_way_moves_every_parameter(options, fmnist_small):
    if options.get("arch") != "linear":
        options = {**options, "hidden": (16,)}
    if options.get("prior") == "flow" or options.get("guide") == "iaf":
        options = {**options, "flows": 1}
    if options.get("prior") == "mog":
        options = {**options, "prior_components": 3}
    pyro.set_rng_seed(0)
    config = Config(z_dim=2, data_shape=(28, 28), num_classes=10, **options).for_data(
        (28, 28), 1000)
    vae = VAE.from_config(config)
    grey = fmnist_small.train[:16]
    x = grey.bernoulli() if config.binarizes else grey
    y = fmnist_small.train_labels[:16]
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, JointOptim(torch.optim.Adam, vae, {"lr": 1e-2}),
              build_elbo(config))
    extra = {"contractive": 0.1} if config.train.contractive else {}
    if vae.semi_supervised:
        extra["classifier_weight"] = config.train.classifier_weight
        assert math.isfinite(svi.step(x))  # unlabelled: the class summed out
    assert math.isfinite(svi.step(x, None, y, **extra))
    unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == [], unchanged


@pytest.mark.parametrize("options, message", [
    (dict(labelled=100, elbo="meanfield"), "use --elbo trace"),
    (dict(labelled=100, elbo="iwae", particles=2), "use --elbo trace"),
    (dict(labelled=100, contractive=0.1), "drop one"),
    (dict(labelled="all", classifier_weight=0.0), "--classifier-weight > 0"),
    (dict(classifier_weight=1.0), "give it with --labelled N"),
    (dict(labelled=100, condition="age", dataset="t.csv"), "needs --condition label"),
    (dict(condition="label", prior="vamp"), "--prior vamp"),
    (dict(condition="age"), "not a .csv or .parquet table"),
    (dict(condition="a,,b", dataset="t.csv"), "comma-separated names"),
    (dict(condition="a,a", dataset="t.csv"), "names a column twice"),
    (dict(labelled=0), "positive number of labels"),
    (dict(labelled="some"), "positive number of labels"),
])
def test_senseless_conditional_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        Config(**options)


def test_labels_are_kept_balanced_and_seeded(fmnist_small):
    kept = hide_labels(fmnist_small, 100, seed=3, classes=10).train_labels
    assert (kept >= 0).sum() == 100
    assert torch.equal(torch.bincount(kept[kept >= 0], minlength=10), torch.full((10,), 10))
    assert torch.equal(kept[kept >= 0], fmnist_small.train_labels[kept >= 0])
    again = hide_labels(fmnist_small, 100, seed=3, classes=10).train_labels
    other = hide_labels(fmnist_small, 100, seed=4, classes=10).train_labels
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    odd = hide_labels(fmnist_small, 13, seed=0, classes=10).train_labels
    assert torch.bincount(odd[odd >= 0], minlength=10).tolist() == [2, 2, 2] + [1] * 7
    for keep, message in ((5, "fewer than the 10 classes"), (5000, "more than the 2000"),
                          (1990, "has only")):
        with pytest.raises(DataError, match=message):
            hide_labels(fmnist_small, keep, seed=0, classes=10)


@pytest.fixture(scope="module")
def mixture():
    """Three clusters x = Wz + b_y + ε (D = 10, d = 2), labelled for 30 points, and a fitted
    linear M2 model of them."""
    rng = np.random.default_rng(0)
    w, means = rng.normal(size=(10, 2)), 3 * rng.normal(size=(K, 10))
    y = rng.integers(K, size=2400)
    x = rng.normal(size=(2400, 2)) @ w.T + means[y] + 0.5 * rng.normal(size=(2400, 10))
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    data = Data(x[:2000], x[2000:], (10,), y[:2000], y[2000:])
    vae, rows = fit(data=data, labelled=30, arch="linear", likelihood="normal", obs_scale=0.5,
                    z_dim=2, epochs=15, lr=1e-2, progress=False)
    return vae, x[2000:], y[2000:], rows


def test_the_class_summed_nll_matches_the_closed_form_of_a_mixture(mixture):
    # z ~ N(0, I), y ~ Cat(1/3), x | z, y ~ N(Wz + B e_y + b, c²I)
    #   ⇒  p(x) = Σ_y ⅓ N(x; b + B e_y, WWᵀ + c²I).
    vae, x, y, rows = mixture
    weight, bias = vae.decoder.net.weight.detach(), vae.decoder.net.bias.detach()
    w, b = weight[:, :2], weight[:, 2:]
    cov = w @ w.T + 0.25 * torch.eye(10)
    per_class = torch.stack([torch.distributions.MultivariateNormal(bias + b[:, k], cov)
                             .log_prob(x) for k in range(K)], -1)
    exact = -(per_class.logsumexp(-1) - math.log(K))
    pyro.set_rng_seed(0)
    result = evaluate(vae, x, iwae_samples=500, y=y, progress=False)
    assert abs(result["nll"] - exact.mean().item()) < 3 * result["nll_stderr"]
    assert (result["nll_per_image"] - exact).abs().mean() < 0.05
    assert result["neg_elbo"] > result["nll"]
    assert result["reconstruction"] + result["kl"] == pytest.approx(result["neg_elbo"])
    # Separated clusters: 30 labels and the unlabelled points classify the test set.
    assert result["accuracy"] > 0.95 and rows[-1]["test_accuracy"] == pytest.approx(
        result["accuracy"], abs=1e-4)


def test_the_benchmarks_generative_classifier_is_the_models_bayes_classifier(mixture):
    # benchmarks/bench_semisupervised.py scores argmax_y ELBO(x, y); for the linear-Gaussian
    # mixture the exact log p(x | y) is known, so its argmax is the classifier it estimates.
    spec = importlib.util.spec_from_file_location(
        "bench_semisupervised", Path(__file__).parents[1] / "benchmarks/bench_semisupervised.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    vae, x, y, _ = mixture
    weight, bias = vae.decoder.net.weight.detach(), vae.decoder.net.bias.detach()
    w, b = weight[:, :2], weight[:, 2:]
    cov = w @ w.T + 0.25 * torch.eye(10)
    exact = torch.stack([torch.distributions.MultivariateNormal(bias + b[:, k], cov)
                         .log_prob(x) for k in range(K)], -1).argmax(-1)
    with torch.no_grad():
        discriminative = vae.classify(x).argmax(-1)
    pyro.set_rng_seed(0)
    accuracy, agreement = bench.generative_classifier(vae, x, y, samples=20)
    assert accuracy == pytest.approx((exact == y).float().mean().item(), abs=0.01)
    assert agreement == pytest.approx((exact == discriminative).float().mean().item(), abs=0.01)
    # And it is a classifier of these points, not of the class order or of one class.
    shuffled = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(0))]
    assert accuracy > 0.95 > bench.generative_classifier(vae, x, shuffled, samples=20)[0] + 0.4


@pytest.fixture(scope="module")
def conditional_fmnist(fashion_mnist):
    """A conditional VAE fitted on Fashion-MNIST for 10 epochs with β = 2 (the decoder leans
    on the label rather than on z; see the README, Labels), and a plain classifier of the grey
    levels, trained on the same training images, to judge what it draws."""
    data = fashion_mnist
    vae, rows = fit(data=data, condition="label", beta=2.0, epochs=10, progress=False)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                     torch.nn.Linear(256, 10))
    optim = torch.optim.Adam(classifier.parameters(), 1e-3)
    x, y = data.train, data.train_labels
    for _ in range(3):
        for i in torch.randperm(x.shape[0]).split(100):
            loss = torch.nn.functional.cross_entropy(classifier(x[i]), y[i])
            optim.zero_grad()
            loss.backward()
            optim.step()
    accuracy = (classifier(data.test).argmax(-1) == data.test_labels).float().mean()
    assert accuracy > 0.85, "the judge itself must classify real images"
    return vae, classifier, rows


@pytest.mark.slow  # about 90 s: a 10-epoch run on Fashion-MNIST
def test_conditional_samples_show_the_class_asked_for(conditional_fmnist):
    vae, classifier, rows = conditional_fmnist
    assert rows[-1]["test_neg_elbo"] < rows[0]["test_neg_elbo"]
    pyro.set_rng_seed(0)
    y = class_rows(vae, 10, 50)  # 50 draws of each class
    with torch.no_grad():
        judged = classifier(vae.sample(500, mean=True, y=y)).argmax(-1)
    per_class = (judged == y).float().reshape(10, 50).mean(1)
    assert per_class.mean() > 0.8, per_class


@pytest.mark.slow  # shares the 10-epoch run above
def test_analogies_keep_the_style_and_change_the_class(conditional_fmnist, fashion_mnist):
    vae, classifier, _ = conditional_fmnist
    x = binarize_fixed(fashion_mnist.test[:20])
    with torch.no_grad():
        grid = analogies_grid(vae, x, fashion_mnist.test_labels[:20]).reshape(20, 11, 784)
        judged = classifier(grid[:, 1:].reshape(-1, 784)).argmax(-1).reshape(20, 10)
    assert (judged == torch.arange(10)).float().mean() > 0.8
    # The style is kept: each decoded image, encoded again with its class, gives back (about)
    # the code it was decoded from, much closer than the codes of two test images are.
    with torch.no_grad():
        z = vae.encode(x, fashion_mnist.test_labels[:20])[0]
        again = vae.encode(grid[:, 1:].reshape(-1, 784), torch.arange(10).repeat(20))[0]
    kept = (again.reshape(20, 10, -1) - z[:, None]).norm(dim=-1).mean()
    apart = torch.cdist(z, z).sum() / (20 * 19)
    assert kept < 0.5 * apart, (kept, apart)


def test_conditional_runs_reload_with_their_condition(tmp_path, fmnist_small):
    vae, _ = fit(data=fmnist_small, labelled=50, epochs=1, hidden=(32,), z_dim=4,
                 out=tmp_path / "run", progress=False)
    loaded = load(tmp_path / "run")
    assert loaded.semi_supervised and loaded.num_classes == 10
    assert loaded.config.condition == "label" and loaded.config.semi_supervised
    x = binarize_fixed(fmnist_small.test[:8])
    assert torch.equal(loaded.classify(x), vae.classify(x))
    for a, b in zip(loaded.encode(x), vae.encode(x)):
        assert torch.equal(a, b)


def _same_runs(a, b, exact=True):
    """The same weights (to the last bit, or with ``exact=False`` to float32 rounding: the
    compiled enumerated objective sums over classes in another order) and test figures."""
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=name)
    for r, s in zip(a.metrics, b.metrics):
        assert r["test_neg_elbo"] == pytest.approx(s["test_neg_elbo"], abs=0 if exact else 1e-2)
        assert r["test_accuracy"] == s["test_accuracy"]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("options", [dict(labelled=40), dict(labelled="all", kl_warmup=1)])
def test_the_compiled_semi_supervised_objective_trains_as_the_uncompiled_one(options,
                                                                             fmnist_small):
    runs = [fit(data=fmnist_small, limit=600, epochs=2, hidden=(32,), z_dim=4, jit=jit,
                progress=False, **options) for jit in (False, True)]
    _same_runs(*runs, exact=options["labelled"] == "all")  # all labelled: nothing enumerated


def test_a_resumed_semi_supervised_run_matches_an_uninterrupted_one(fmnist_small, tmp_path):
    options = dict(data=fmnist_small, limit=600, labelled=30, hidden=(32,), z_dim=4,
                   progress=False)
    whole = fit(out=tmp_path / "whole", epochs=3, **options)
    fit(out=tmp_path / "part", epochs=1, **options)
    part = fit(resume=tmp_path / "part", epochs=3, data=fmnist_small, progress=False)
    _same_runs(whole, part)


def test_an_epoch_pairs_every_unlabelled_batch_with_a_labelled_one(fmnist_small, monkeypatch):
    from pyro_vae.training import plan

    steps = []
    real = plan.TrainingPlan._take_step

    def spy(self, batch, y, epoch, step, steps_per_epoch):
        steps.append((step, batch.shape[0], None if y is None else tuple(y.tolist())))
        return real(self, batch, y, epoch, step, steps_per_epoch)

    monkeypatch.setattr(plan.TrainingPlan, "_take_step", spy)
    fit(data=fmnist_small, limit=500, labelled=20, batch_size=100, epochs=1, hidden=(16,),
        z_dim=2, progress=False)
    # 480 unlabelled images in 5 batches (the last of 80), each followed by all 20 labels
    assert [(s, n) for s, n, _ in steps] == [(i, n) for i in range(5) for n in (100 if i < 4
                                                                                 else 80, 20)]
    labelled = [y for _, _, y in steps if y is not None]
    assert all(y is None for _, _, y in steps[::2]) and len(set(map(frozenset, labelled))) == 1
    assert len(labelled[0]) == 20 and min(labelled[0]) >= 0


@pytest.mark.parametrize("passes, at_steps", [(1, [0]), (2, [0, 2]), (3, [0, 1, 3]),
                                              (5, [0, 1, 2, 3, 4])])
def test_labelled_passes_spread_the_labelled_batches_over_the_epoch(passes, at_steps,
                                                                    fmnist_small, monkeypatch):
    # Pyro's ss_vae_M2.py schedule: the labelled images P times an epoch, one batch every
    # steps/P unlabelled ones (batch j at step ⌊j·5/P⌋), instead of beside every one of them.
    from pyro_vae.training import plan

    steps, batches = [], []
    real_step, real_batch = plan.TrainingPlan._take_step, plan.TrainingPlan._batch

    def spy_step(self, batch, y, epoch, step, steps_per_epoch):
        steps.append((step, y is not None))
        return real_step(self, batch, y, epoch, step, steps_per_epoch)

    def spy_batch(self, x, positions, fresh=False):
        batches.append((fresh, positions.tolist()))
        return real_batch(self, x, positions, fresh)

    monkeypatch.setattr(plan.TrainingPlan, "_take_step", spy_step)
    monkeypatch.setattr(plan.TrainingPlan, "_batch", spy_batch)
    fit(data=fmnist_small, limit=500, labelled=20, batch_size=100, epochs=1, hidden=(16,),
        z_dim=2, labelled_passes=passes, progress=False)
    assert [s for s, labelled in steps if labelled] == at_steps
    assert [s for s, labelled in steps if not labelled] == list(range(5))
    labelled = [b for b, (_, is_labelled) in zip(batches, steps) if is_labelled]
    unlabelled = [b for b, (_, is_labelled) in zip(batches, steps) if not is_labelled]
    rows = [row for _, batch in labelled for row in batch]
    assert all(len(batch) == 20 for _, batch in labelled)
    assert Counter(rows) == {row: passes for row in set(rows)} and len(set(rows)) == 20
    # Once an epoch, from the epoch's draw; several passes drawn afresh each time round.
    assert all(fresh == (passes > 1) for fresh, _ in labelled)
    assert not any(fresh for fresh, _ in unlabelled)
    assert len({row for _, batch in unlabelled for row in batch} - set(rows)) == 480


@pytest.mark.parametrize("passes", [None, 1, 3])
def test_two_processes_split_each_steps_labelled_batch_between_them(passes):
    # Under torchrun every rank draws the same orders and takes every world-th row of them:
    # the two ranks take their labelled batches at the same steps, never the same image at
    # once, and between them show every labelled image once a pass.
    from types import SimpleNamespace

    from pyro_vae.training import plan
    from pyro_vae.training.distributed import Cluster

    config = SimpleNamespace(train=SimpleNamespace(batch_size=100, seed=0,
                                                   labelled_passes=passes))
    streams = [(torch.arange(40, 570), False), (torch.arange(40), True)]
    taken = []
    for rank in (0, 1):
        me = SimpleNamespace(streams=streams, config=config, cluster=Cluster(rank, 2, rank))
        orders, steps = plan.TrainingPlan._orders(me, torch.zeros(570, 1), epoch=2)
        per_step = []
        for step in range(steps):
            row = []
            for order, size, labelled, _, at in orders:
                j = step if at is None else at.get(step)
                row.append(None if j is None else order[j * size:(j + 1) * size].tolist())
            per_step.append(row)
        taken.append((steps, per_step))
    (steps, first), (steps_other, second) = taken
    assert steps == steps_other == 6
    labelled_steps, shown = 0, []
    for a, b in zip(first, second):
        for mine, theirs in zip(a, b):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert len(mine) == len(theirs) and not set(mine) & set(theirs)
        if a[1] is not None:
            labelled_steps += 1
            assert set(a[1]) | set(b[1]) <= set(range(40)) and len(a[1]) == 20
            shown += a[1] + b[1]
    assert labelled_steps == {None: 6, 1: 1, 3: 3}[passes]
    # every labelled image as often as its stream goes round: once a pass
    assert sorted(shown) == sorted(list(range(40)) * labelled_steps)


def test_more_labelled_passes_than_steps_are_refused_not_ignored(fmnist_small, tmp_path):
    # 480 unlabelled images in batches of 100: 5 steps, room for 5 passes of 20 labels.
    with pytest.raises(ConfigError, match="needs 6 labelled batches an epoch but an epoch has "
                                          "5 steps; give at most 5"):
        fit(data=fmnist_small, limit=500, labelled=20, batch_size=100, labelled_passes=6,
            epochs=1, hidden=(16,), z_dim=2, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cycled_labelled_images_are_binarised_afresh_each_time_round(fmnist_small, monkeypatch):
    # Dynamic binarisation draws each image again every time it is shown. The 20 labelled
    # images go round 5 times an epoch: one draw per epoch would show the decoder and the
    # classifier the same binary image every time (and two processes two draws: they then
    # differed by 2.6 nats of test -ELBO).
    from pyro_vae.training import plan

    shown = {True: {}, False: {}}
    real = plan.TrainingPlan._batch

    def spy(self, x, positions, fresh=False):
        batch = real(self, x, positions, fresh)
        assert set(batch.unique().tolist()) <= {0.0, 1.0}
        for row, image in zip(positions.tolist(), batch):
            shown[fresh].setdefault(row, []).append(tuple(image.tolist()))
        return batch

    monkeypatch.setattr(plan.TrainingPlan, "_batch", spy)
    fit(data=fmnist_small, limit=500, labelled=20, batch_size=100, epochs=1, hidden=(16,),
        z_dim=2, progress=False)
    assert len(shown[False]) == 480 and all(len(d) == 1 for d in shown[False].values())
    assert len(shown[True]) == 20
    for row, draws in shown[True].items():  # each labelled image 5 times, in 5 draws
        assert len(draws) == 5 and len(set(draws)) == 5, row


# --- From the command line ------------------------------------------------------------------

from PIL import Image  # noqa: E402

from conftest import cli, snapshot  # noqa: E402

SMALL = ["--z-dim", "4", "--hidden", "64", "--batch-size", "100", "--quiet"]


@pytest.fixture(scope="module")
def m2_run(fmnist_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "m2"
    result = cli("fit", "--dataset", fmnist_npz, "--labelled", 50, "--epochs", 2, *SMALL,
                 "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_fit_records_the_labels_and_the_test_accuracy(m2_run):
    import csv
    import json

    config = json.loads((m2_run / "config.json").read_text())
    assert config["model"]["condition"] == "label" and config["model"]["semi_supervised"]
    assert config["model"]["num_classes"] == 10 and config["data"]["labelled"] == "50"
    rows = list(csv.DictReader(open(m2_run / "metrics.csv")))
    assert 0.3 < float(rows[-1]["test_accuracy"]) <= 1.0
    # samples.png: 8 draws of each class, a class a row (28 px + 2 px padding each)
    assert Image.open(m2_run / "samples.png").size == (8 * 30 + 2, 10 * 30 + 2)


def test_evaluate_sums_the_class_out_and_reports_the_accuracy(m2_run, tmp_path):
    import json

    result = cli("evaluate", m2_run, "--iwae-samples", 20, "--limit", 100, "--quiet",
                 "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "class summed out" in result.output and "accuracy          0." in result.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["nll"] < figures["neg_elbo"] and 0 < figures["accuracy"] <= 1


def test_encode_writes_the_class_probabilities(m2_run, fmnist_npz, tmp_path):
    result = cli("encode", m2_run, "--data", fmnist_npz, "--limit", 50, "--out",
                 tmp_path / "c.npz")
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "c.npz")
    assert codes["loc"].shape == (50, 4) and codes["probs"].shape == (50, 10)
    assert np.allclose(codes["probs"].sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("args, size", [
    (["--label", 3], (8 * 30 + 2, 8 * 30 + 2)),
    (["--mode", "analogies", "--num", 4], (11 * 30 + 2, 4 * 30 + 2)),
    (["--mode", "reconstruct", "--num", 8], (8 * 30 + 2, 2 * 30 + 2)),
    (["--mode", "interpolate", "--num", 2], (10 * 30 + 2, 2 * 30 + 2)),
    (["--mode", "traverse"], (9 * 30 + 2, 4 * 30 + 2)),
    (["--mode", "latents", "--num", 200], None),
])
def test_every_picture_mode_draws_a_label_model(args, size, m2_run, tmp_path):
    result = cli("sample", m2_run, *args, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    if size is not None:
        assert Image.open(tmp_path / "p.png").size == size


def test_diagnose_checks_the_continuous_latent_given_the_class(m2_run, tmp_path):
    result = cli("diagnose", m2_run, "--num-images", 4, "--psis-draws", 100, "--draws", 10,
                 "--nuts-images", 1, "--chains", 2, "--warmup", 20, "--nuts-samples", 20,
                 "--quiet", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "Checked given the class y" in (tmp_path / "d" / "report.md").read_text()


def _partly_labelled(npz) -> dict:
    """The arrays of ``npz`` with the second half of the training labels −1: no label."""
    arrays = dict(npz)
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][arrays["y_train"].shape[0] // 2 :] = -1
    return arrays


def test_m2_trains_on_partly_labelled_data(fmnist_npz, tmp_path, monkeypatch):
    # A user's .npz whose y_train holds −1 for the images without a label: --labelled all uses
    # every label there is, --labelled N draws N of them; the rest are summed out.
    from pyro_vae.training import plan

    path = tmp_path / "partly.npz"
    arrays = _partly_labelled(np.load(fmnist_npz))
    np.savez(path, **arrays)
    streams = []
    real = plan.TrainingPlan._streams

    def spy(self):
        found = real(self)
        streams.append({labelled: rows.numel() for rows, labelled in found})
        return found

    monkeypatch.setattr(plan.TrainingPlan, "_streams", spy)
    for labelled, kept, extra in (("all", 1000, []), (200, 200, []),
                                  ("all", 1000, ["--labelled-passes", 1])):
        result = cli("fit", "--dataset", path, "--labelled", labelled, "--epochs", 1, *SMALL,
                     *extra, "--out", tmp_path / f"{labelled}{len(extra)}")
        assert result.exit_code == 0, result.output
        assert "test accuracy" in result.output
        assert streams[-1] == {True: kept, False: 2000 - kept}
    from pyro_vae.io.data import hide_labels, load_data

    data = load_data(Config(dataset=str(path), labelled="200"))
    shown = hide_labels(data, 200, 0, 10).train_labels
    assert int((shown >= 0).sum()) == 200 and bool((shown[1000:] == -1).all())
    assert bool((shown[shown >= 0] == data.train_labels[shown >= 0]).all())


@pytest.mark.parametrize("case, args, message", [
    ("no-labels", ["--condition", "label"], "needs class labels"),
    ("no-labels", ["--labelled", 100], "needs class labels"),
    ("npz", ["--labelled", 5000], "more than the 2000 training labels"),
    ("npz", ["--labelled", 5], "fewer than the 10 classes"),
    ("test-label-10", ["--condition", "label"], "outside the classes 0 to 9"),
    ("no-test-labels", ["--condition", "label"], "needs the test images' labels too"),
    ("no-test-labels", ["--labelled", 100], "needs the test images' labels too"),
    ("negative", ["--labelled", 100], "outside the classes"),
    ("negative", ["--condition", "label"], "outside the classes"),
    ("partly", ["--condition", "label"], "--labelled all sums their class out"),
    ("none-labelled", ["--labelled", "all"], "every training label"),
    ("test-unlabelled", ["--labelled", 100], "need every label"),
    ("partly", ["--labelled", 1500], "more than the 1000 training labels"),
    ("npz", ["--condition", "age"], "not a .csv or .parquet table"),
    ("npz", ["--labelled", 100, "--elbo", "meanfield"], "use --elbo trace"),
    ("npz", ["--classifier-weight", 3], "with --labelled N"),
    ("npz", ["--labelled-passes", 1], "with --labelled N"),
    ("npz", ["--labelled", 200, "--labelled-passes", 50], "18 steps; give at most 9"),
    ("balanced", ["--labelled", 200, "--classifier-weight", 0], "keeps the label of every"),
    ("npz", ["--labelled", "many"], "positive number of labels"),
    ("table-missing", ["--condition", "label", "--label-column", "kind"], "missing values"),
    ("table", ["--condition", "nosuch"], "has no numeric column 'nosuch'"),
])
def test_bad_labels_are_refused_in_one_line_and_nothing_is_written(case, args, message,
                                                                   fmnist_npz, tmp_path):
    x = np.load(fmnist_npz)
    dataset = {
        "npz": fmnist_npz,
        "no-labels": tmp_path / "x.npy",
        "test-label-10": tmp_path / "t10.npz",
        "negative": tmp_path / "neg.npz",
        "no-test-labels": tmp_path / "nt.npz",
        "none-labelled": tmp_path / "none.npz",
        "test-unlabelled": tmp_path / "tu.npz",
        "partly": tmp_path / "partly.npz",
        "balanced": tmp_path / "balanced.npz",
        "table": tmp_path / "t.csv",
        "table-missing": tmp_path / "tm.csv",
    }[case]
    if case == "no-labels":
        np.save(dataset, x["x_train"])
    elif case == "partly":
        np.savez(dataset, **_partly_labelled(x))
    elif case == "balanced":  # 20 images of each class, every one labelled
        rows = np.concatenate([np.flatnonzero(x["y_train"] == k)[:20] for k in range(10)])
        np.savez(dataset, x_train=x["x_train"][rows], y_train=x["y_train"][rows],
                 x_test=x["x_test"], y_test=x["y_test"])
    elif case in ("test-label-10", "negative", "no-test-labels", "none-labelled",
                  "test-unlabelled"):
        arrays = dict(x)
        if case == "no-test-labels":
            del arrays["y_test"]
        elif case == "negative":  # −1 would mark images without a label: −2 is no class
            arrays["y_train"] = arrays["y_train"] - 2
        elif case == "none-labelled":
            arrays["y_train"] = np.full_like(arrays["y_train"], -1)
        elif case == "test-unlabelled":
            arrays["y_test"] = arrays["y_test"].copy()
            arrays["y_test"][:5] = -1
        else:
            arrays["y_test"] = arrays["y_test"].copy()
            arrays["y_test"][0] = 10
        np.savez(dataset, **arrays)
    elif case.startswith("table"):
        import pandas as pd

        table = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) ** 0.5,
                              "kind": ["x", "y"] * 25})
        if case == "table-missing":
            table.loc[3, "kind"] = None
        table.to_csv(dataset, index=False)
        args = [*args, "--likelihood", "normal-learned"] + (
            ["--drop-non-numeric"] if case == "table" else [])
    before = snapshot(tmp_path)
    result = cli("fit", "--dataset", dataset, "--epochs", 1, *SMALL, *args,
                 "--out", tmp_path / "run")
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--label", 10], "--label must be a class from 0 to 9"),
    (["--label", -1], "--label must be a class from 0 to 9"),
    (["--mode", "reconstruct", "--label", 2], "drop it for --mode reconstruct"),
])
def test_sample_refuses_labels_it_cannot_draw(args, message, m2_run, tmp_path):
    result = cli("sample", m2_run, *args, "--out", tmp_path / "p.png")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "p.png").exists()


def test_labels_and_analogies_need_a_label_model(fmnist_npz, tmp_path):
    out = tmp_path / "plain"
    assert cli("fit", "--dataset", fmnist_npz, "--epochs", 1, *SMALL, "--out", out).exit_code == 0
    for args, message in ((["--label", 1], "needs a model conditioned on the class label"),
                          (["--mode", "analogies"], "needs a model conditioned on the class")):
        result = cli("sample", out, *args, "--out", tmp_path / "p.png")
        assert result.exit_code == 1 and message in result.output, result.output


def test_covariates_are_taken_out_of_the_codes(tmp_path):
    # statsmodels' US macroeconomic quarters trend with time: an unconditional model's codes
    # track the year, a model conditioned on the year keeps much less of it in its codes.
    import statsmodels.datasets as datasets
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = datasets.macrodata.load_pandas().data
    path, features = tmp_path / "macro.csv", tmp_path / "features.csv"
    table.to_csv(path, index=False)
    table.drop(columns=["year", "quarter"]).to_csv(features, index=False)
    explained = {}
    for name, data, extra in (("plain", features, []),
                              ("conditioned", path, ["--condition", "year,quarter"])):
        result = cli("fit", "--dataset", data, "--likelihood", "normal-learned", "--z-dim", 2,
                     "--hidden", 32, "--epochs", 100, "--quiet", *extra, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert cli("encode", tmp_path / name, "--data", data, "--out",
                   tmp_path / f"{name}.npy").exit_code == 0
        codes = np.load(tmp_path / f"{name}.npy")
        design = np.column_stack([codes, np.ones(len(codes))])
        year = table["year"].to_numpy()
        fitted = design @ np.linalg.lstsq(design, year, rcond=None)[0]
        explained[name] = 1 - ((year - fitted) ** 2).sum() / ((year - year.mean()) ** 2).sum()
    assert explained["plain"] > 0.9 and explained["conditioned"] < 0.5, explained
    config = load(tmp_path / "conditioned").config
    assert config.covariates == ("year", "quarter") and config.data_shape == (12,)
    result = cli("evaluate", tmp_path / "conditioned", "--iwae-samples", 20, "--quiet")
    assert result.exit_code == 0 and "given the covariates" in result.output, result.output
    result = cli("sample", tmp_path / "conditioned", "--out", tmp_path / "draws.npy")
    assert result.exit_code == 1 and "conditioned on covariates" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "draws.npy").exists()
    with pytest.raises(ConfigError, match="give y, one per row"):
        load(tmp_path / "conditioned").sample(4)


def test_a_table_in_memory_is_conditioned_on_its_columns_as_a_file_is(tmp_path):
    """fit(data=Data(..., columns=...)) takes the covariates out by name, as --dataset t.csv
    --condition does, and refuses them for data without column names."""
    import statsmodels.datasets as datasets
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = datasets.macrodata.load_pandas().data
    rows = torch.tensor(table.to_numpy(), dtype=torch.float32)
    data = Data(rows[:160], rows[160:], (rows.shape[1],), source="US macro quarters",
                columns=tuple(table.columns))  # any source: the column names decide
    vae, metrics = fit(data=data, condition="year,quarter", likelihood="normal-learned",
                       z_dim=2, hidden=(16,), epochs=2, progress=False)
    assert vae.condition is not None and vae.condition.dim == 2
    assert vae.config.data_shape == (12,)  # 14 columns less the 2 covariates
    assert vae.config.covariates == ("year", "quarter") and math.isfinite(
        metrics[-1]["test_neg_elbo"])
    with pytest.raises(DataError, match="is not a table; use --condition label"):
        fit(data=Data(rows[:160], rows[160:], (rows.shape[1],)), condition="year",
            likelihood="normal-learned", epochs=1, progress=False)


def test_a_semi_supervised_run_resumes_exactly_from_a_mid_epoch_checkpoint(fmnist_small,
                                                                          tmp_path, monkeypatch):
    from conftest import dies_at_save

    def dies_here(progress):  # right after this periodic checkpoint
        partial = progress.get("partial")
        return bool(partial) and partial["epoch"] == 2 and partial["step"] == 3

    options = dict(data=fmnist_small, limit=600, labelled=30, batch_size=100, hidden=(32,),
                   z_dim=4, checkpoint_every=3, progress=False)
    with dies_at_save(monkeypatch, dies_here):
        fit(out=tmp_path / "run", epochs=3, **options)
    resumed = fit(resume=tmp_path / "run", epochs=3, data=fmnist_small, progress=False)
    whole = fit(out=tmp_path / "whole", epochs=3, **options)
    _same_runs(whole, resumed)


def test_a_run_with_spread_labelled_batches_resumes_exactly_mid_epoch(fmnist_small, tmp_path,
                                                                     monkeypatch):
    from conftest import dies_at_save

    def dies_here(progress):  # between the epoch's two labelled batches (steps 0 and 3)
        partial = progress.get("partial")
        return bool(partial) and partial["epoch"] == 2 and partial["step"] == 2

    options = dict(data=fmnist_small, limit=600, labelled=30, batch_size=100, hidden=(32,),
                   z_dim=4, checkpoint_every=2, labelled_passes=2, progress=False)
    with dies_at_save(monkeypatch, dies_here):
        fit(out=tmp_path / "run", epochs=3, **options)
    resumed = fit(resume=tmp_path / "run", epochs=3, data=fmnist_small, progress=False)
    whole = fit(out=tmp_path / "whole", epochs=3, **options)
    _same_runs(whole, resumed)
