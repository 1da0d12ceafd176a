"""--tensorboard: event files written during training and read back with TensorBoard's own
EventAccumulator (issue 14)."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import dies_at_save
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyro_vae import fit, load

OPTIONS = dict(hidden=(32,), z_dim=4, batch_size=100, validation_fraction=0.1, progress=False)


def events(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tensorboard"),
                                   size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_event_files_hold_the_metrics_latent_usage_pictures_and_hyperparameters(
        fmnist_npz, tmp_path):
    model, rows = fit(dataset=str(fmnist_npz), out=tmp_path / "run", epochs=3, tensorboard=True,
                      **OPTIONS)
    board = events(tmp_path / "run")
    for tag, column in [("neg_elbo/train", "train_neg_elbo"), ("neg_elbo/test", "test_neg_elbo"),
                        ("neg_elbo/validation", "validation_neg_elbo"), ("lr", "lr"),
                        ("kl/total_correlation", "test_tc")]:
        assert scalars(board, tag) == [(r["epoch"], pytest.approx(r[column], rel=1e-6))
                                       for r in rows], tag
    norms = [v for _, v in scalars(board, "grad_norm")]
    assert len(norms) == 3 and all(v > 0 for v in norms)
    # Active units and each unit's KL term on 500 test images, after every epoch.
    active = [v for _, v in scalars(board, "active_units")]
    assert len(active) == 3 and all(1 <= v <= 4 for v in active)
    per_unit = [[v for _, v in scalars(board, f"kl_per_dim/z{u}")] for u in range(4)]
    assert all(len(kl) == 3 for kl in per_unit)
    last = [kl[-1] for kl in per_unit]
    assert all(v >= 0 for v in last) and sum(v > 0.01 for v in last) >= active[-1] - 1
    # Pictures at the first and the last epoch: an 8-wide grid of 64 samples of 28×28.
    images = board.Images("samples")
    assert [im.step for im in images] == [1, 3]
    assert (images[0].width, images[0].height) == (8 * 30 + 2, 8 * 30 + 2)
    assert [im.step for im in board.Images("reconstructions")] == [1, 3]
    # The hyperparameters, with the kept epoch's figures (TensorBoard's HParams plugin).
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    hparams.Reload()
    content = hparams.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = info.session_start_info.hparams
    assert values["z_dim"].number_value == 4 and values["arch"].string_value == "mlp"
    assert values["arch_hidden"].string_value == "[32]"


def test_tensorboard_leaves_training_as_it_was(fmnist_npz, tmp_path):
    _, with_board = fit(dataset=str(fmnist_npz), out=tmp_path / "a", epochs=2, tensorboard=True,
                        **OPTIONS)
    _, without = fit(dataset=str(fmnist_npz), out=tmp_path / "b", epochs=2, **OPTIONS)
    assert ([{k: v for k, v in r.items() if k != "train_seconds"} for r in with_board]
            == [{k: v for k, v in r.items() if k != "train_seconds"} for r in without])
    for x, y in zip(load(tmp_path / "a").state_dict().values(),
                    load(tmp_path / "b").state_dict().values()):
        assert torch.equal(x, y)
    assert not (tmp_path / "b" / "tensorboard").exists()


@pytest.mark.parametrize("saved", [True, False])
def test_a_resumed_run_continues_its_event_files_without_repeating_epochs(saved, fmnist_npz,
                                                                        tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, epochs=2, tensorboard=True, **OPTIONS)
    time.sleep(1.1)
    # Dies after epoch 3's events: before its checkpoint (the epoch is redone), or after its
    # training state, before its other files.
    with dies_at_save(monkeypatch, lambda progress: progress["epoch"] == 3, before=not saved):
        fit(resume=run, epochs=4, progress=False)
    # TensorBoard reads a folder's event files in name order, and a name starts with the second
    # its writer was made, then a counter of this process: a real resume, a later process,
    # sorts after the killed one's files; here in one process, it must start a second later.
    time.sleep(1.1)
    _, rows = fit(resume=run, epochs=4, progress=False)
    board = events(run)
    assert scalars(board, "neg_elbo/test") == [(r["epoch"], pytest.approx(r["test_neg_elbo"],
                                                                          rel=1e-6))
                                               for r in rows]
    # --overwrite replaces the old run's event files with the new run's.
    fit(dataset=str(fmnist_npz), out=run, epochs=1, tensorboard=True, overwrite=True,
        **OPTIONS)
    assert [step for step, _ in scalars(events(run), "neg_elbo/test")] == [1]


def test_a_run_resumed_inside_its_first_epoch_records_each_epoch_once_and_exactly(
        fmnist_npz, tmp_path, monkeypatch):
    """Killed after epoch 1's events but before its checkpoint, with a mid-epoch state saved
    earlier in epoch 1: the resumed run redoes the rest of epoch 1, TensorBoard drops the stale
    events, and the epoch's mean gradient norm counts the steps of both processes."""
    options = dict(OPTIONS, dataset=str(fmnist_npz), epochs=2, tensorboard=True,
                   checkpoint_every=7)
    with dies_at_save(monkeypatch, before=True, when=lambda progress: (
            progress["epoch"] == 1 and progress.get("partial") is None)):
        fit(out=tmp_path / "run", **options)
    time.sleep(1.1)  # see test_a_resumed_run_continues_its_event_files_without_repeating_epochs
    fit(resume=tmp_path / "run", progress=False)
    fit(out=tmp_path / "whole", **options)
    for tag in ("neg_elbo/test", "grad_norm", "lr"):
        assert scalars(events(tmp_path / "run"), tag) == scalars(events(tmp_path / "whole"),
                                                                 tag), tag
