import json
import os
import pickle
import stat

import pyro
import pytest
import torch

from pyro_vae import VAE, CheckpointError, Config, RunDirError, load, save
from pyro_vae.io.checkpoint import CONFIG_FILE, WEIGHTS_FILE, prepare_run_dir


@pytest.fixture
def saved(tmp_path, small_vae):
    save(small_vae, tmp_path / "run")
    return tmp_path / "run", small_vae


def test_round_trip_gives_identical_outputs(saved):
    run, vae = saved
    loaded = load(run)
    assert loaded.config == vae.config
    x = torch.rand(5, 784)
    for a, b in zip(vae.encode(x), loaded.encode(x)):
        assert torch.equal(a, b)
    z = torch.randn(5, 4)
    assert torch.equal(vae.decode(z), loaded.decode(z))
    pyro.set_rng_seed(3)
    first = loaded.sample(4)
    pyro.set_rng_seed(3)
    assert torch.equal(first, vae.sample(4))


def test_files_are_written_readable_and_without_leftovers(saved):
    run, _ = saved
    assert sorted(p.name for p in run.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    mode = stat.S_IMODE(os.stat(run / WEIGHTS_FILE).st_mode)
    assert mode & stat.S_IRGRP, "written files follow the umask, not mkstemp's 0600"


def test_truncated_weights_are_refused(saved):
    run, _ = saved
    data = (run / WEIGHTS_FILE).read_bytes()
    (run / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(run)


def test_corrupted_header_is_refused(saved):
    run, _ = saved
    data = bytearray((run / WEIGHTS_FILE).read_bytes())
    data[8:40] = b"\xff" * 32
    (run / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(run)


def test_pickle_in_place_of_weights_is_refused_without_running(saved, tmp_path):
    run, _ = saved
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / WEIGHTS_FILE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load(run)
    assert not marker.exists()


def test_weights_from_another_architecture_are_refused(saved, tmp_path):
    run, _ = saved
    other = VAE.from_config(Config(z_dim=6, hidden=(32,), data_shape=(28, 28)))
    save(other, tmp_path / "other")
    (run / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load(run)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(format_version=99), "format version 99"),
        (lambda c: c.update(format="something-else"), "not a pyro_vae run"),
        (lambda c: c["model"].update(new_option=1), "unknown keys"),
        (lambda c: c["training"].update(new_option=1), "unknown keys"),
        (lambda c: c["model"].update(z_dim=-3), "invalid value"),
        (lambda c: c["model"]["prior"].update(name="cauchy"), "invalid value"),
        (lambda c: c["model"].pop("data_shape"), "data_shape"),
    ],
)
def test_incompatible_or_invalid_config_is_refused(saved, edit, match):
    run, _ = saved
    payload = json.loads((run / CONFIG_FILE).read_text())
    edit(payload)
    (run / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=match):
        load(run)


def test_config_that_is_not_json_is_refused(saved):
    run, _ = saved
    (run / CONFIG_FILE).write_bytes(b"\x80\x04not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(run)


def test_empty_or_foreign_folders_are_not_runs(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load(tmp_path / "nothing")
    with pytest.raises(RunDirError, match="not a pyro_vae run"):
        load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a pyro_vae run"):
        load(tmp_path)


def test_overwrite_replaces_runs_but_never_foreign_folders(saved, tmp_path):
    run, _ = saved
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_run_dir(run, overwrite=False)
    assert prepare_run_dir(run, overwrite=True) == run and not any(run.iterdir())
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="never deletes"):
        prepare_run_dir(foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_config_describing_an_impossible_model_is_refused(saved):
    run, _ = saved
    payload = json.loads((run / CONFIG_FILE).read_text())
    payload["model"]["data_shape"] = [100000, 100000]
    (run / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="cannot be built|does not match"):
        load(run)


def test_constant_buffers_stay_out_of_checkpoints(saved):
    run, vae = saved
    from safetensors.torch import load_file

    names = set(load_file(run / WEIGHTS_FILE))
    # Parameters, and the one buffer set from the data (the Bernoulli's mean logit offset).
    assert names == {n for n, _ in vae.named_parameters()} | {"likelihood.offset"}


@pytest.mark.parametrize(
    "options",
    [
        dict(prior="mog", guide="iaf", arch="conv", likelihood="categorical", flows=2,
             prior_components=3),
        dict(prior="vamp", likelihood="normal-learned", elbo="iwae", particles=3,
             prior_components=3, min_obs_scale=0.05),
        dict(prior="flow", guide="normal", arch="linear", likelihood="continuous-bernoulli"),
        dict(prior="none", guide="delta", likelihood="laplace", corrupt="mask:0.3",
             contractive=0.1, beta=0.5, kl_warmup=2, clip_norm=3.0, obs_scale=0.2),
        dict(prior="studentt", prior_df=5.0, elbo="meanfield", particles=2),
    ],
)
def test_every_choice_round_trips_through_config_json(tmp_path, options):
    pyro.set_rng_seed(0)
    hidden = {} if options.get("arch") == "linear" else {"hidden": (16,)}
    config = Config(z_dim=4, data_shape=(8, 8), **hidden, **options)
    vae = VAE.from_config(config)
    for p in vae.parameters():  # away from initialisation, so equality means loaded weights
        torch.nn.init.normal_(p, std=0.1)
    save(vae, tmp_path / "run")
    loaded = load(tmp_path / "run")
    assert loaded.config == config.model
    x = torch.rand(5, 64)
    for a, b in zip(vae.encode(x), loaded.encode(x)):
        assert torch.equal(a, b)
    z = torch.randn(5, 4)
    assert torch.equal(vae.decode(z), loaded.decode(z))
    assert torch.equal(vae.prior().log_prob(z), loaded.prior().log_prob(z))
    assert torch.equal(vae.posterior(x).log_prob(z), loaded.posterior(x).log_prob(z))
    if config.prior != "none":
        pyro.set_rng_seed(7)
        first = vae.sample(3)
        pyro.set_rng_seed(7)
        assert torch.equal(first, loaded.sample(3)), "sampling (the flow's inverse) agrees too"
