import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae import VAE, Config, fit
import pyro_vae.io.data as data_module
from pyro_vae.io.data import as_float, binarize, binarize_fixed, draw_binary
from pyro_vae.training.plan import neg_elbo


def test_svi_moves_every_parameter_on_real_data(fmnist_small):
    pyro.set_rng_seed(0)
    config = Config(z_dim=8, hidden=(64, 32), prior="laplace", data_shape=(28, 28))
    vae = VAE.from_config(config)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    x = binarize_fixed(fmnist_small.train[:256])
    svi.step(x)
    store = pyro.get_param_store()
    registered = {id(store[name]) for name in store.keys()}
    assert all(id(p) in registered for p in vae.parameters()), "every parameter reaches Pyro"
    for _ in range(4):
        svi.step(x)
    unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


def test_fit_lowers_test_neg_elbo_on_fashion_mnist(fmnist_small):
    model, metrics = fit(data=fmnist_small, epochs=3, z_dim=10, hidden=(200,), progress=False)
    test = [row["test_neg_elbo"] for row in metrics]
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    assert test[0] - test[-1] > 20, test
    assert test == sorted(test, reverse=True), test
    # The metric is the mean −ELBO in nats per image: re-estimating it must agree closely.
    pyro.set_rng_seed(1)
    again = neg_elbo(model, binarize_fixed(fmnist_small.test))
    assert abs(again - test[-1]) < 2.0


def test_fit_is_reproducible_on_cpu(fmnist_small):
    runs = [
        fit(data=fmnist_small, epochs=2, seed=s, hidden=(64,), progress=False) for s in (3, 3, 4)
    ]

    def drop_time(rows):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    assert drop_time(runs[0].metrics) == drop_time(runs[1].metrics)
    assert drop_time(runs[0].metrics) != drop_time(runs[2].metrics)
    for (k, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b), k


def test_dynamic_binarisation_redraws_while_test_binarisation_is_fixed(fmnist_small):
    x = fmnist_small.train[:500]
    a, b = binarize(x), binarize(x)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a, b)
    assert abs(a.mean().item() - x.mean().item()) < 0.01
    pyro.set_rng_seed(123)
    t1 = binarize_fixed(x)
    pyro.set_rng_seed(456)
    assert torch.equal(t1, binarize_fixed(x)), "the test set must not depend on --seed"


def test_epoch_draw_is_the_bernoulli_of_each_grey_level(fashion_mnist, monkeypatch):
    # draw_binary replaces torch.bernoulli for the per-epoch draw: the same distribution,
    # P(1) = k/255 for grey level k, on the uint8 levels and on float probabilities.
    levels = torch.arange(256, dtype=torch.uint8).repeat(8000, 1)  # 8000 draws of each level
    freq = draw_binary(levels, torch.Generator().manual_seed(0)).float().mean(0)
    p = torch.arange(256) / 255.0
    assert freq[0] == 0 and freq[255] == 1
    # 5 standard errors of a proportion from 8000 draws, for every level at once
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / 8000).sqrt() + 1e-9).all()
    freq = draw_binary(p.repeat(8000, 1), torch.Generator().manual_seed(0)).float().mean(0)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / 8000).sqrt() + 1e-9).all()
    rows = fashion_mnist.train_rows[:12000]  # real images, several chunks of 2^22 values
    a = draw_binary(rows, torch.Generator().manual_seed(5))
    assert a.dtype == torch.bool and a.shape == rows.shape
    assert abs(a.float().mean().item() - as_float(rows).mean().item()) < 1e-3
    assert not torch.equal(a, draw_binary(rows, torch.Generator().manual_seed(6)))
    # the draws do not depend on the chunking, and binary rows are kept as they are
    whole = data_module.chunks
    monkeypatch.setattr(data_module, "chunks", lambda x: whole(x, elements=1 << 30))
    assert torch.equal(a, draw_binary(rows, torch.Generator().manual_seed(5)))
    assert draw_binary(a) is a


@pytest.mark.slow
def test_foundation_figures_full_fashion_mnist_10_epochs(fashion_mnist):
    # Issue 2 acceptance: 784-400-20, batch 128, 10 epochs, seed 0: test −ELBO ≤ 244 nats
    # (a plain PyTorch VAE with the same networks reaches 242.7, ../shared/ANCHORS.md).
    vae, metrics = fit(data=fashion_mnist, epochs=10, z_dim=20, hidden=(400,), batch_size=128,
                       seed=0, progress=False)
    assert metrics[-1]["test_neg_elbo"] <= 244.0, metrics[-1]
    # Issue 4 acceptance: importance-sampled NLL with K = 1000 (first 2000 test images, the
    # reference's protocol) at most 241 nats (plain PyTorch: 239.2) and below the −ELBO.
    from pyro_vae.evaluation.evaluate import evaluate

    pyro.set_rng_seed(0)
    figures = evaluate(vae, binarize_fixed(fashion_mnist.test[:2000]), iwae_samples=1000,
                       progress=False)
    assert figures["nll"] <= 241.0 and figures["nll"] < figures["neg_elbo"], figures


def test_fit_leaves_pyros_param_store_as_it_was(fmnist_small):
    store = pyro.get_param_store()
    store.clear()
    pyro.param("users_own", torch.ones(2))
    fit(data=fmnist_small, epochs=1, hidden=(32,), progress=False)
    assert list(store.keys()) == ["users_own"]


def test_a_signal_mid_epoch_saves_a_state_that_resumes_exactly(fmnist_npz, tmp_path,
                                                               monkeypatch):
    import os
    import signal

    from pyro_vae import TrainingInterrupted, load
    from pyro_vae.io.checkpoint import load_training_state
    from pyro_vae.training.optim import JointOptim

    options = dict(dataset=str(fmnist_npz), hidden=(32,), z_dim=4, batch_size=100,
                   progress=False)
    step = JointOptim.__call__
    calls = {"n": 0}

    def step_then_signal(self, params, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 37:  # in epoch 2 of 20 steps each
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, params, *args, **kwargs)

    monkeypatch.setattr(JointOptim, "__call__", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        fit(out=tmp_path / "run", epochs=3, **options)
    monkeypatch.setattr(JointOptim, "__call__", step)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler restored"
    state = load_training_state(tmp_path / "run")
    assert state["progress"]["epoch"] == 1 and state["progress"]["partial"]["step"] == 17
    _, resumed = fit(resume=tmp_path / "run", epochs=3, progress=False)
    _, whole = fit(out=tmp_path / "whole", epochs=3, **options)
    drop = [{k: v for k, v in r.items() if k != "train_seconds"} for r in resumed]
    assert drop == [{k: v for k, v in r.items() if k != "train_seconds"} for r in whole]
    a, b = load(tmp_path / "run"), load(tmp_path / "whole")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_named_dataset_given_in_memory_is_stored_by_name_and_read_again(tmp_path):
    # load_data's Fashion-MNIST handed to fit: the run names the dataset and its first 300
    # training images, so evaluate needs no data and a resumed run reads the same rows.
    import json

    from pyro_vae import evaluate_run, load_data
    from pyro_vae.config import IN_MEMORY

    data = load_data(Config(limit=300))
    options = dict(epochs=2, hidden=(16,), z_dim=4, batch_size=100, progress=False)
    _, whole = fit(data=data, out=tmp_path / "whole", **options)
    stored = json.loads((tmp_path / "whole" / "config.json").read_text())["data"]
    assert (stored["dataset"], stored["limit"]) == ("fashion-mnist", 300)
    figures = evaluate_run(tmp_path / "whole", limit=50, iwae_samples=5, progress=False)
    assert figures["num_images"] == 50 and figures["nll"] < 550
    fit(data=data, out=tmp_path / "half", **{**options, "epochs": 1})
    _, resumed = fit(resume=tmp_path / "half", epochs=2, progress=False)  # no data given
    for a, b in zip(resumed, whole):
        assert {k: v for k, v in a.items() if k != "train_seconds"} == {
            k: v for k, v in b.items() if k != "train_seconds"}

    assert data.dataset == data.replace(test=data.test_rows).dataset == "fashion-mnist"
    # With validation rows already held out, the rows are not the first N: kept in memory.
    held_out = load_data(Config(limit=300, validation_fraction=0.1))
    fit(data=held_out, out=tmp_path / "split", **{**options, "epochs": 1})
    stored = json.loads((tmp_path / "split" / "config.json").read_text())["data"]
    assert stored["dataset"] == IN_MEMORY
