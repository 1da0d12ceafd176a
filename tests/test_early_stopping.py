"""Validation sets, early stopping, the kept best model and learning-rate schedules (issue 14)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Killed, dies_at_save

from pyro_vae import Config, ConfigError, DataError, fit, load
from pyro_vae.io import checkpoint
from pyro_vae.io.data import split_validation, validation_share
from pyro_vae.training.lr_schedule import parse_lr_schedule
from pyro_vae.training.plan import epochs_without_improvement, kept_epoch


def no_time(rows):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


#: A model wide enough to overfit 450 statically binarised Fashion-MNIST images within a few
#: dozen epochs (150 more are its validation set): the issue's --early-stopping 5
#: --lr-schedule plateau run of at most 50 epochs, on a subset.
OVERFIT = dict(limit=600, validation_fraction=0.25, binarize="static", hidden=(512,), z_dim=16,
               batch_size=25, lr=3e-3, epochs=50, early_stopping=5, lr_schedule="plateau",
               progress=False)


def test_early_stopping_stops_and_keeps_the_epoch_of_lowest_validation_elbo(fmnist_small,
                                                                          tmp_path):
    model, rows = result = fit(data=fmnist_small, out=tmp_path / "run", **OVERFIT)
    assert len(rows) < 50 and result.stopped_early and rows[-1]["stopped_early"] == 1
    valid = [r["validation_neg_elbo"] for r in rows]
    best = valid.index(min(valid)) + 1
    assert result.kept_epoch == best and best == len(rows) - 5  # stopped 5 epochs after it
    assert all(v >= valid[best - 1] for v in valid[best:])
    # The kept model is the one of that epoch: its test -ELBO is no worse than the last epoch's.
    assert rows[best - 1]["test_neg_elbo"] <= rows[-1]["test_neg_elbo"]
    # model.safetensors holds it, with its epoch; the loaded model and fit's are the same.
    tensors, meta = checkpoint.read_weights(tmp_path / "run")
    assert meta["epoch"] == str(best)
    same_weights(load(tmp_path / "run"), model)
    from pyro_vae.evaluation.evaluate import evaluate_run, summary_lines

    report = evaluate_run(tmp_path / "run", "fashion-mnist", iwae_samples=2, limit=100,
                          progress=False)
    assert (report["epoch"], report["kept_by"]) == (best, "lowest validation -ELBO")
    assert f"model             epoch {best} (lowest validation -ELBO)" in summary_lines(report)
    # The training state holds the last epoch's weights (for --resume), not the best.
    state = checkpoint.load_training_state(tmp_path / "run")
    assert any(not torch.equal(state["model"][k], v) for k, v in tensors.items())
    # The training curve shows the validation -ELBO and marks the kept epoch.
    from pyro_vae import plots

    lines = {line.get_label(): line
             for line in plots.training_curve_figure(rows, kept=best).axes[0].get_lines()}
    assert set(lines) == {"train", "test", "validation", f"kept (epoch {best})"}
    assert list(lines["validation"].get_ydata()) == valid
    assert list(lines[f"kept (epoch {best})"].get_xdata()) == [best, best]
    plain = [{k: v for k, v in r.items() if k != "validation_neg_elbo"} for r in rows]
    assert [line.get_label() for line in plots.training_curve_figure(plain).axes[0].get_lines()
            ] == ["train", "test"]
    # The plateau schedule lowered the learning rate once the validation -ELBO stalled.
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == 3e-3 and min(lrs) < 3e-3 and lrs == sorted(lrs, reverse=True)
    # A stopped run is not resumed: there is nothing to continue.
    with pytest.raises(ConfigError, match="stopped early after epoch"):
        fit(resume=tmp_path / "run", epochs=60, progress=False)


def test_the_validation_set_is_a_seeded_share_of_the_training_rows_never_the_test_set(
        fmnist_small):
    config = Config(early_stopping=2)
    assert validation_share(config) == 0.1 and validation_share(Config()) == 0
    assert validation_share(Config(lr_schedule="plateau")) == 0.1
    assert validation_share(Config(validation_fraction=0.2, lr_schedule="cosine")) == 0.2
    data = split_validation(fmnist_small, 0.1)
    assert data.valid_rows.shape[0] == 200 and data.train_rows.shape[0] == 1800
    assert torch.equal(data.test_rows, fmnist_small.test_rows)
    # Every training row lands in exactly one part, with its label.
    rows = torch.cat([data.train_rows, data.valid_rows])
    labels = torch.cat([data.train_labels, data.valid_labels])
    order = torch.argsort(rows.sum(1) * 1000 + labels)
    reference = torch.argsort(fmnist_small.train_rows.sum(1) * 1000 + fmnist_small.train_labels)
    assert torch.equal(rows[order], fmnist_small.train_rows[reference])
    # The split does not depend on --seed: runs with other seeds share the validation set.
    _, a = fit(data=fmnist_small, validation_fraction=0.1, seed=1, epochs=1, hidden=(32,),
               z_dim=4, progress=False)
    _, b = fit(data=fmnist_small, validation_fraction=0.1, seed=2, epochs=1, hidden=(32,),
               z_dim=4, progress=False)
    assert "validation_neg_elbo" in a[0] and a[0]["validation_neg_elbo"] != b[0]["validation_neg_elbo"]


def test_a_validation_file_is_read_and_checked(fmnist_small, fmnist_npz, tmp_path):
    import numpy as np

    _, rows = fit(dataset=str(fmnist_npz), validation_dataset=str(fmnist_npz), epochs=2,
                  early_stopping=5, hidden=(32,), z_dim=4, progress=False)
    # The .npz's x_test is the validation set here: the two scores are of the same images.
    assert abs(rows[-1]["validation_neg_elbo"] - rows[-1]["test_neg_elbo"]) < 1.0
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 20, 20), dtype=np.uint8))
    with pytest.raises(DataError, match="validation file matching the training data"):
        fit(dataset=str(fmnist_npz), validation_dataset=str(wrong), epochs=1, progress=False)


@pytest.mark.parametrize("options, message", [
    ({"early_stopping": 3, "validation_fraction": 0.0}, "leaves no validation set"),
    ({"lr_schedule": "plateau", "validation_fraction": 0.0}, "leaves no validation set"),
    ({"min_delta": 0.5}, "--min-delta applies to --early-stopping"),
    ({"lr_schedule": "cosine:10", "epochs": 5}, "shorter warm-up"),
])
def test_what_needs_a_validation_set_or_a_longer_run_is_refused(options, message,
                                                                fmnist_small, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        fit(data=fmnist_small, out=tmp_path / "run", hidden=(32,), progress=False, **options)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    ({"lr_schedule": "linear"}, "unknown --lr-schedule"),
    ({"lr_schedule": "plateau:2,1"}, "0 < FACTOR < 1"),
    ({"lr_schedule": "step:0,0.5"}, "EVERY ≥ 1"),
    ({"lr_schedule": "step:2"}, "takes step:EVERY,GAMMA"),
    ({"lr_schedule": "step:1,inf"}, "needs finite numbers"),
    ({"lr_schedule": "cosine:x"}, "must be numbers"),
    ({"lr_schedule": "constant:1"}, "constant takes no parameters"),
    ({"validation_fraction": 1.0}, "must be a share in"),
    ({"validation_fraction": 0.1, "validation_dataset": "v.npy"}, "not both"),
    ({"early_stopping": 0}, "early-stopping"),
])
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        Config(**options)
    assert "\n" not in str(err.value)


def test_the_bookkeeping_rules():
    rows = [{"epoch": e + 1, "validation_neg_elbo": v}
            for e, v in enumerate([10.0, 9.0, 8.95, 9.5, 8.9, math.nan])]
    assert kept_epoch(rows) == 5  # the lowest; NaN never counts
    assert epochs_without_improvement(rows, 0.0) == 1
    assert epochs_without_improvement(rows, 0.2) == 4  # 8.95 and 8.9 are within 0.2 of 9.0
    assert kept_epoch([{"epoch": 1}, {"epoch": 2}]) == 2  # no validation: the last epoch
    assert parse_lr_schedule("plateau").params == (0.5, 2)
    assert parse_lr_schedule("step:3,0.1").params == (3, 0.1)


@pytest.mark.parametrize("schedule, expected", [
    ("step:2,0.5", [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]),
    # A warm-up epoch at lr/2, then cosine annealing over the last 4 epochs.
    ("cosine:1", [5e-4] + [1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]),
    ("constant", [1e-3] * 5),
])
def test_schedules_set_the_learning_rate_of_each_epoch(schedule, expected, fmnist_small):
    _, rows = fit(data=fmnist_small, limit=500, epochs=5, lr_schedule=schedule, hidden=(32,),
                  z_dim=4, progress=False)
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow  # 20 s; CI runs it with -m slow
@pytest.mark.parametrize("where", ["after epoch 3", "mid-epoch"])
def test_a_run_with_a_schedule_and_early_stopping_resumes_exactly(where, fmnist_npz,
                                                                  tmp_path, monkeypatch):
    def dies_here(progress):
        partial = progress.get("partial") is not None
        return (where == "mid-epoch") == partial and progress["epoch"] == 3

    options = dict(OVERFIT, lr_schedule="plateau:0.5,0", early_stopping=4, hidden=(128,))
    if where == "mid-epoch":
        options["checkpoint_every"] = 3
    with dies_at_save(monkeypatch, dies_here):
        fit(dataset=str(fmnist_npz), out=tmp_path / "run", **options)
    resumed = fit(resume=tmp_path / "run", progress=False)
    whole = fit(dataset=str(fmnist_npz), out=tmp_path / "whole", **options)
    assert no_time(resumed.metrics) == no_time(whole.metrics)
    assert whole.stopped_early and len(whole.metrics) > 4  # stopped after the resume point
    assert len({r["lr"] for r in whole.metrics}) > 1  # the schedule acted
    assert whole.kept_epoch < len(whole.metrics)
    same_weights(resumed.model, whole.model)
    same_weights(load(tmp_path / "run"), load(tmp_path / "whole"))


def test_a_cosine_run_resumes_only_to_its_own_length(fmnist_small, tmp_path):
    fit(data=fmnist_small, out=tmp_path / "run", limit=300, epochs=3, lr_schedule="cosine:1",
        hidden=(32,), z_dim=4, progress=False)
    with pytest.raises(ConfigError, match="resume it with --epochs 3"):
        fit(resume=tmp_path / "run", epochs=6, progress=False)


def test_the_command_line_names_the_kept_epoch_and_the_stop(fmnist_npz, tmp_path):
    from click.testing import CliRunner

    from pyro_vae.cli import main

    flags = []
    for name, value in OVERFIT.items():
        if name == "progress":
            continue
        flags += [f"--{name.replace('_', '-')}",
                  ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    result = CliRunner().invoke(main, ["fit", "--dataset", str(fmnist_npz), *flags, "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = checkpoint.load_training_state(tmp_path / "run")["progress"]["rows"]
    best = kept_epoch(rows)
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith(f"done: {len(rows)} epochs (stopped early)")
    assert f"kept epoch {best}, validation -ELBO {rows[best - 1]['validation_neg_elbo']:.2f}" \
        in summary and f"test -ELBO {rows[best - 1]['test_neg_elbo']:.2f}" in summary
    assert f"early stopping after epoch {len(rows)}" in result.output


def test_the_validation_nll_is_estimated_every_n_epochs_without_changing_training(fmnist_small):
    options = dict(limit=500, validation_fraction=0.2, epochs=3, hidden=(32,), z_dim=4,
                   progress=False)
    _, with_nll = fit(data=fmnist_small, validation_nll_every=2, **options)
    _, without = fit(data=fmnist_small, **options)
    assert [("validation_nll" in r) for r in with_nll] == [False, True, True]  # and the last
    for row in with_nll[1:]:  # the importance-sampled bound is the tighter one
        assert row["validation_nll"] < row["validation_neg_elbo"]
    assert no_time([{k: v for k, v in r.items() if k != "validation_nll"} for r in with_nll]) \
        == no_time(without)
    with pytest.raises(ConfigError, match="guide with a density"):
        fit(data=fmnist_small, validation_nll_every=1, guide="delta", **options)


def test_a_best_epoch_cut_off_before_its_weights_file_survives_two_resumes(fmnist_npz, tmp_path,
                                                                          monkeypatch):
    """Killed between the training state and model.safetensors of an epoch that set a new best,
    resumed, killed again in the next epoch after a mid-epoch save (which replaces the training
    state that held those weights): the run still resumes, as if it had never stopped."""
    options = dict(dataset=str(fmnist_npz), limit=500, epochs=4, hidden=(32,), z_dim=4,
                   batch_size=50, validation_fraction=0.2, checkpoint_every=4, progress=False)

    real_weights = checkpoint.save_weights

    def weights_then_die(vae, run_dir, state=None, epoch=None):
        if epoch == 2:
            raise Killed
        real_weights(vae, run_dir, state=state, epoch=epoch)

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_weights", weights_then_die)
    with pytest.raises(Killed):
        fit(out=run, **options)
    monkeypatch.setattr(checkpoint, "save_weights", real_weights)
    with dies_at_save(monkeypatch, lambda progress: (progress.get("partial") or {}).get(
            "epoch") == 3):
        fit(resume=run, progress=False)
    resumed = fit(resume=run, progress=False)
    whole = fit(out=tmp_path / "whole", **options)
    assert no_time(resumed.metrics) == no_time(whole.metrics)
    same_weights(resumed.model, whole.model)
    same_weights(load(run), load(tmp_path / "whole"))
