"""`pyro-vae fit` and `sample` as a user runs them, and every bad input they must refuse."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli as run, snapshot

SMALL = ["--z-dim", "8", "--hidden", "128", "--batch-size", "100", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(fmnist_npz, tmp_path_factory):
    """A user's .npz trained through the real console script, as in the README."""
    out = tmp_path_factory.mktemp("runs") / "npz-run"
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae.cli", "fit", "--dataset", fmnist_npz, "--epochs", "2",
         *SMALL, "--out", out],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("done: 2 epochs")
    return out


def test_fit_writes_a_complete_run_directory(trained_run):
    names = sorted(p.name for p in trained_run.iterdir())
    assert names == ["config.json", "metrics.csv", "model.safetensors", "reconstructions.png",
                     "samples.png", "training_curve.png", "training_state.safetensors"]
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"epoch", "train_seconds", "train_neg_elbo", "test_neg_elbo"} <= set(rows[0])
    assert float(rows[1]["test_neg_elbo"]) < float(rows[0]["test_neg_elbo"])
    model = json.loads((trained_run / "config.json").read_text())["model"]
    assert model["data_shape"] == [28, 28] and model["arch"]["hidden"] == [128]
    assert Image.open(trained_run / "samples.png").size == (242, 242)  # 8×8 of 28 px, 2 px pad


@pytest.mark.parametrize("mean", [False, True])
def test_sample_writes_grid_and_array(trained_run, tmp_path, mean):
    flag = ["--mean"] if mean else []
    result = run("sample", trained_run, "--num", 64, *flag, "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "grid.png").size == (242, 242)
    result = run("sample", trained_run, "--num", 10, "--seed", 1, *flag,
                 "--out", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (10, 28, 28)
    if mean:
        assert 0 < x.min() and x.max() < 1 and len(np.unique(x)) > 100
    else:
        assert set(np.unique(x)) <= {0.0, 1.0}


def test_sample_is_seeded(trained_run, tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        result = run("sample", trained_run, "--seed", seed, "--out", tmp_path / f"{name}.npy")
        assert result.exit_code == 0, result.output
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_help_documents_every_option():
    text = run("fit", "--help").output
    for flag in ["--dataset", "--test-dataset", "--data-dir", "--limit", "--binarize",
                 "--likelihood", "--obs-scale", "--prior", "--prior-scale", "--z-dim", "--hidden",
                 "--epochs", "--batch-size", "--lr", "--seed", "--device", "--out", "--overwrite",
                 "--guide", "--flows", "--prior-df", "--prior-components", "--arch", "--corrupt",
                 "--contractive", "--elbo", "--particles", "--beta", "--kl-warmup", "--clip-norm",
                 "--min-obs-scale"]:
        assert flag in text
    assert "--mean" in run("sample", "--help").output


def _bad_files(tmp_path, fmnist_npz):
    """Data files a user might hand us by mistake, keyed by a short name."""
    rng = np.random.default_rng(0)
    files = {
        "garbage.npy": b"this is not an array",
        "garbage.npz": b"PK\x03\x04 broken zip",
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    np.save(tmp_path / "flat.npy", rng.random(500).astype(np.float32))
    np.save(tmp_path / "4d.npy", rng.random((10, 2, 28, 28)).astype(np.float32))
    nan = rng.random((300, 28, 28)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = rng.random((300, 28, 28)).astype(np.float32)
    inf[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    np.save(tmp_path / "range.npy", (rng.random((300, 28, 28)) * 255).astype(np.float32))
    np.save(tmp_path / "negative.npy", rng.random((300, 28, 28)).astype(np.float32) - 0.5)
    np.save(tmp_path / "tiny.npy", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "nokey.npz", images=rng.random((300, 28, 28)))
    np.save(tmp_path / "testshape.npy", rng.integers(0, 256, (50, 14, 14), dtype=np.uint8))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    (tmp_path / "data.txt").write_text("1,2,3\n")
    return tmp_path


BAD_FIT = [
    (["--dataset", "cifar-11"], "unknown dataset"),
    (["--dataset", "{d}/missing.npz"], "does not exist"),
    (["--dataset", "{d}/data.txt"], "is not .npy, .npz, .csv or .parquet"),
    (["--dataset", "{d}/data.csv"], "has no rows"),
    (["--dataset", "{d}/garbage.npy"], "cannot read"),
    (["--dataset", "{d}/garbage.npz"], "cannot read"),
    (["--dataset", "{d}/flat.npy"], "expected (N, H, W)"),
    (["--dataset", "{d}/4d.npy"], "cannot tell where its channels are"),
    (["--dataset", "{d}/nan.npy"], "NaN or infinite"),
    (["--dataset", "{d}/inf.npy"], "NaN or infinite"),
    (["--dataset", "{d}/range.npy"], "[0, 1]"),
    (["--dataset", "{d}/negative.npy"], "[0, 1]"),
    (["--dataset", "{d}/tiny.npy"], "--batch-size"),
    (["--dataset", "{d}/strings.npy"], "give uint8"),
    (["--dataset", "{d}/objects.npy"], "cannot read"),
    (["--dataset", "{d}/nokey.npz"], "x_train"),
    (["--dataset", "{npz}", "--test-dataset", "{d}/testshape.npy"], "shape"),
    (["--dataset", "{npz}", "--binarize", "none"], "--binarize dynamic"),
    (["--dataset", "{npz}", "--likelihood", "normal", "--binarize", "static"],
     "bernoulli likelihood only"),
    (["--dataset", "{npz}", "--limit", "20"], "--batch-size"),
    (["--dataset", "{npz}", "--z-dim", "0"], "--z-dim must be a positive"),
    (["--dataset", "{npz}", "--hidden", "0"], "--hidden must be a positive"),
    (["--dataset", "{npz}", "--epochs", "0"], "--epochs must be a positive"),
    (["--dataset", "{npz}", "--batch-size", "-1"], "--batch-size must be a positive"),
    (["--dataset", "{npz}", "--lr", "0"], "--lr must be a positive"),
    (["--dataset", "{npz}", "--lr", "nan"], "--lr must be a positive"),
    (["--dataset", "{npz}", "--limit", "0"], "--limit must be a positive"),
    (["--dataset", "{npz}", "--obs-scale", "-1", "--likelihood", "normal"], "--obs-scale"),
    (["--dataset", "{npz}", "--prior-scale", "0", "--prior", "laplace"], "--prior-scale"),
    (["--dataset", "{npz}", "--seed", "-1"], "--seed"),
    (["--dataset", "{npz}", "--device", "cuda"], "no CUDA GPU"),
]


@pytest.mark.parametrize("args, message", BAD_FIT, ids=[" ".join(a) for a, _ in BAD_FIT])
def test_fit_refuses_bad_input_with_one_clear_line(
    args, message, tmp_path, fmnist_npz, monkeypatch
):
    if "cuda" in args:
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    folder = _bad_files(tmp_path, fmnist_npz)
    args = [a.format(d=folder, npz=fmnist_npz) for a in args]
    before = snapshot(tmp_path)
    result = run("fit", *SMALL, "--epochs", 1, *args, "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), "no traceback: a handled error"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert snapshot(tmp_path) == before, "a refused run changes nothing on disk"


def test_fit_refuses_a_non_empty_out_unless_overwrite(trained_run, fmnist_npz, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    before = snapshot(run_copy)
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--out", run_copy)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert snapshot(run_copy) == before
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--seed", 9,
                 "--out", run_copy, "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((run_copy / "config.json").read_text())["training"]["seed"] == 9
    assert len(list(csv.DictReader(open(run_copy / "metrics.csv")))) == 1


def _damage(run_dir, how):
    weights = run_dir / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "corrupted":
        data = bytearray(weights.read_bytes())
        data[:8] = b"\xff" * 8
        weights.write_bytes(bytes(data))
    elif how == "old-version":
        payload = json.loads((run_dir / "config.json").read_text())
        payload["format_version"] = 0
        (run_dir / "config.json").write_text(json.dumps(payload))
    elif how == "no-weights":
        weights.unlink()


BAD_SAMPLE = [
    ("empty", "not a pyro_vae run"),
    ("missing", "does not exist"),
    ("foreign", "not a pyro_vae run"),
    ("truncated", "truncated or corrupted"),
    ("corrupted", "truncated or corrupted"),
    ("old-version", "format version 0"),
    ("no-weights", "missing"),
]


@pytest.mark.parametrize("case, message", BAD_SAMPLE, ids=[c for c, _ in BAD_SAMPLE])
def test_sample_refuses_bad_run_directories(case, message, trained_run, tmp_path):
    target = tmp_path / "run"
    if case == "empty":
        target.mkdir()
    elif case == "foreign":
        target.mkdir()
        (target / "holiday.jpg").write_bytes(b"\xff\xd8")
    elif case != "missing":
        shutil.copytree(trained_run, target)
        _damage(target, case)
    before = snapshot(tmp_path)
    result = run("sample", target, "--out", tmp_path / "grid.png")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{t}/grid.jpg"], ".png (image grid) or .npy"),
        (["--out", "{t}/no/such/dir/grid.png"], "does not exist"),
        (["--num", "0", "--out", "{t}/g.png"], "--num"),
        (["--seed", "-2", "--out", "{t}/g.png"], "--seed"),
    ],
)
def test_sample_refuses_bad_options(args, message, trained_run, tmp_path):
    result = run("sample", trained_run, *[a.format(t=tmp_path) for a in args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_diverging_training_stops_with_one_line_and_keeps_the_old_run(
    trained_run, fmnist_npz, tmp_path
):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    before = snapshot(run_copy)
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--lr", "1e6",
                 "--out", run_copy, "--overwrite")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "training diverged at epoch 1" in lines[0], lines
    assert snapshot(run_copy) == before, "the old run is replaced only after a good epoch"


def test_overwrite_keeps_files_that_are_not_the_runs(trained_run, fmnist_npz, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    (run_copy / "notes.md").write_text("my notes")
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--out", run_copy,
                 "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run_copy / "notes.md").read_text() == "my notes"


def test_overwrite_refuses_a_project_with_its_own_config_json(fmnist_npz, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my app"}')
    (project / "src" / "main.c").write_text("int main() {}")
    before = snapshot(project)
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--out", project, "--overwrite")
    assert result.exit_code == 1 and "never deletes" in result.output
    assert snapshot(project) == before


@pytest.mark.parametrize("command", ["fit", "sample"])
def test_seed_beyond_numpy_range_is_refused(command, trained_run, fmnist_npz, tmp_path):
    if command == "fit":
        args = ["fit", "--dataset", fmnist_npz, "--seed", 2**32, "--out", tmp_path / "r"]
    else:
        args = ["sample", trained_run, "--seed", 2**32, "--out", tmp_path / "g.png"]
    result = run(*args)
    assert result.exit_code == 1 and "[0, 2^32)" in result.output, result.output


def test_out_below_a_file_is_refused_before_loading_data(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run("fit", "--dataset", tmp_path / "missing.npy", "--out", tmp_path / "afile" / "run")
    assert result.exit_code == 1 and "is a file" in result.output, result.output


def test_sample_on_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    result = run("sample", tmp_path / "run", "--out", tmp_path / "g.png")
    assert result.exit_code == 1 and "is a file" in result.output


def test_model_family_options_train_from_the_cli(fmnist_npz, tmp_path):
    out = tmp_path / "run"
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--prior", "mog",
                 "--prior-components", 5, "--guide", "iaf", "--elbo", "iwae", "--particles", 3,
                 "--likelihood", "categorical", "--arch", "conv", "--limit", 200, "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    model = config["model"]
    assert (model["prior"]["name"], model["guide"]["name"], config["training"]["elbo"],
            model["arch"]["name"]) == ("mog", "iaf", "iwae", "conv")
    row = next(csv.DictReader(open(out / "metrics.csv")))
    bits = float(row["test_bits_per_dim"])
    assert abs(bits - float(row["test_neg_elbo"]) / (784 * np.log(2))) < 1e-4
    assert 0 < bits < 8, "below the 8 bits of a uniform distribution over 256 levels"


def test_meanfield_names_the_sites_it_samples(fmnist_npz, tmp_path):
    result = run("fit", "--dataset", fmnist_npz, "--z-dim", 4, "--hidden", 32,
                 "--batch-size", 100, "--epochs", 1, "--elbo", "meanfield", "--prior", "studentt",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "meanfield: no closed-form KL for z (Normal guide, StudentT prior)" in result.output


def test_plain_autoencoder_cannot_sample_and_says_so(fmnist_npz, tmp_path):
    out = tmp_path / "run"
    result = run("fit", "--dataset", fmnist_npz, *SMALL, "--epochs", 1, "--guide", "delta",
                 "--prior", "none", "--out", out)
    assert result.exit_code == 0, result.output
    assert not (out / "samples.png").exists() and (out / "reconstructions.png").exists()
    result = run("sample", out, "--out", tmp_path / "g.png")
    assert result.exit_code == 1 and "flat prior" in result.output
    assert not (tmp_path / "g.png").exists()


def test_refused_combination_is_one_line_from_the_cli(fmnist_npz, tmp_path):
    result = run("fit", "--dataset", fmnist_npz, "--guide", "delta", "--elbo", "iwae",
                 "--out", tmp_path / "run")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "point mass" in lines[0]
    assert not (tmp_path / "run").exists()


def test_evaluate_reports_and_writes_json(trained_run, tmp_path):
    result = run("evaluate", trained_run, "--iwae-samples", 50, "--limit", 100, "--quiet",
                 "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "eval.json").read_text())
    for key in ["neg_elbo", "nll", "nll_stderr", "bits_per_dim", "active_units", "kl_per_dim",
                "iwae_samples", "num_images"]:
        assert key in figures
    assert figures["num_images"] == 100 and figures["iwae_samples"] == 50
    assert figures["nll"] < figures["neg_elbo"] and len(figures["kl_per_dim"]) == 8
    assert "NLL" in result.output and "active units" in result.output


def test_evaluate_on_another_file_and_bad_options(trained_run, fmnist_npz, tmp_path):
    result = run("evaluate", trained_run, "--dataset", fmnist_npz, "--iwae-samples", 10,
                 "--limit", 20, "--quiet")
    assert result.exit_code == 0 and f"images            20 ({fmnist_npz})" in result.output
    np.save(tmp_path / "small.npy", np.zeros((5, 14, 14), dtype=np.uint8))
    for args, message in [
        (["--dataset", tmp_path / "small.npy"], "shape (14, 14)"),
        (["--iwae-samples", 0], "--iwae-samples must be positive"),
        (["--proposal-scale", 0.5], "point-mass guides"),
        (["--json", tmp_path / "out.txt"], ".json"),
    ]:
        result = run("evaluate", trained_run, *args, "--limit", 5)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_encode_writes_posterior_means_and_scales(trained_run, fmnist_npz, tmp_path, suffix):
    out = tmp_path / f"codes{suffix}"
    result = run("encode", trained_run, "--data", fmnist_npz, "--limit", 30, "--out", out)
    assert result.exit_code == 0, result.output
    if suffix == ".npy":
        assert np.load(out).shape == (30, 8)
    else:
        arrays = np.load(out)
        assert arrays["loc"].shape == arrays["scale"].shape == (30, 8)
        assert (arrays["scale"] > 0).all() and arrays["labels"].shape == (30,)


def test_diagnose_writes_inference_data_khat_nuts_and_a_report(trained_run, tmp_path):
    out = tmp_path / "diag"
    result = run("diagnose", trained_run, "--num-images", 12, "--psis-draws", 200, "--draws", 20,
                 "--nuts-images", 1, "--chains", 2, "--warmup", 50, "--nuts-samples", 50,
                 "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"posterior.nc", "nuts.nc", "khat.csv", "khat.png", "nuts_summary.csv",
            "guide_vs_nuts.csv", "pairs_image0.png", "report.md", "diagnostics.json"} <= names
    import arviz

    idata = arviz.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["z"].shape == (1, 20, 12, 8)
    khat = np.loadtxt(out / "khat.csv", delimiter=",", skiprows=1)
    assert khat.shape == (12, 2) and np.isfinite(khat[:, 1]).all()
    report = (out / "report.md").read_text()
    assert "variational posterior" in report and "R-hat" in report
    again = run("diagnose", trained_run, "--out", out)
    assert again.exit_code == 1 and "not an empty folder" in again.output


@pytest.mark.parametrize(
    "mode, size",
    [
        ("reconstruct", (242, 4 * 30 + 2)),  # 2 rows of 8 originals + 2 of reconstructions
        ("interpolate", (10 * 30 + 2, 3 * 30 + 2)),  # 3 pairs × (x_a, 8 steps, x_b)
        ("traverse", (9 * 30 + 2, 8 * 30 + 2)),  # 8 latent units × 9 values
    ],
)
def test_picture_modes_write_grids_of_the_right_shape(mode, size, trained_run, tmp_path):
    num = {"reconstruct": 16, "interpolate": 3, "traverse": 1}[mode]
    result = run("sample", trained_run, "--mode", mode, "--num", num, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "p.png").size == size


def test_latent_map_and_the_manifold_needs_two_latent_units(trained_run, fmnist_npz, tmp_path):
    result = run("sample", trained_run, "--mode", "latents", "--num", 300,
                 "--out", tmp_path / "map.png")
    assert result.exit_code == 0 and "300 posterior means" in result.output, result.output
    assert Image.open(tmp_path / "map.png").size[0] > 300
    result = run("sample", trained_run, "--mode", "manifold", "--out", tmp_path / "m.png")
    assert result.exit_code == 1 and "--z-dim 2" in result.output
    result = run("sample", trained_run, "--mode", "reconstruct", "--out", tmp_path / "r.npy")
    assert result.exit_code == 1 and ".png" in result.output


def test_interpolation_midpoint_lies_between_the_two_encodings(trained_run):
    from pyro_vae import load
    from pyro_vae.evaluation.pictures import interpolation_grid

    vae = load(trained_run)
    a, b = torch.rand(1, 784).bernoulli(), torch.rand(1, 784).bernoulli()
    grid = interpolation_grid(vae, a, b, steps=3)  # x_a, t = 0, ½, 1, x_b
    z_a, z_b = vae.encode(a)[0], vae.encode(b)[0]
    assert torch.equal(grid[0], a[0]) and torch.equal(grid[4], b[0])
    assert torch.allclose(grid[2], vae.decode((z_a + z_b) / 2)[0])
    assert torch.allclose(grid[1], vae.decode(z_a)[0])
    assert torch.allclose(grid[3], vae.decode(z_b)[0])


def test_manifold_of_a_two_dimensional_model(fmnist_npz, tmp_path):
    out = tmp_path / "run2d"
    result = run("fit", "--dataset", fmnist_npz, "--z-dim", 2, "--hidden", 64, "--batch-size", 100,
                 "--epochs", 1, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    result = run("sample", out, "--mode", "manifold", "--num", 5, "--out", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "m.png").size == (5 * 30 + 2, 5 * 30 + 2)


@pytest.mark.parametrize("args, message", [
    (["--chains", 1], "--chains must be at least 2"),
    (["--psis-draws", 1], "--psis-draws must be at least 100"),
    (["--nuts-images", 200], "--nuts-images must be between"),
])
def test_diagnose_refuses_settings_it_cannot_use_before_writing(args, message, trained_run,
                                                                tmp_path):
    result = run("diagnose", trained_run, *args, "--out", tmp_path / "diag")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_a_failing_diagnose_leaves_no_partial_folder(trained_run, tmp_path, monkeypatch):
    def fail_halfway(vae, x, out_dir, **kwargs):
        (out_dir / "posterior.nc").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pyro_vae.evaluation.diagnostics.diagnose", fail_halfway)
    result = run("diagnose", trained_run, "--num-images", 5, "--out", tmp_path / "diag")
    assert result.exit_code == 1 and "No space left" in result.output
    assert not any(tmp_path.iterdir()), "neither --out nor a staging folder remains"


def test_flat_prior_models_cannot_draw_a_manifold_and_one_unit_models_map(fmnist_npz, tmp_path):
    flat = tmp_path / "flat"
    assert run("fit", "--dataset", fmnist_npz, *SMALL, "--z-dim", 2, "--epochs", 1,
               "--guide", "delta", "--prior", "none", "--out", flat).exit_code == 0
    result = run("sample", flat, "--mode", "manifold", "--out", tmp_path / "m.png")
    assert result.exit_code == 1 and "cannot be sampled" in result.output
    one = tmp_path / "one"
    assert run("fit", "--dataset", fmnist_npz, *SMALL, "--z-dim", 1, "--epochs", 1,
               "--out", one).exit_code == 0
    result = run("sample", one, "--mode", "latents", "--num", 100, "--out", tmp_path / "l.png")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_evaluate_refuses_non_finite_proposal_scales(value, trained_run):
    result = run("evaluate", trained_run, "--proposal-scale", value, "--limit", 5)
    assert result.exit_code == 1 and "--proposal-scale must be positive" in result.output


def test_resume_continues_exactly_where_an_interrupted_run_stopped(fmnist_npz, tmp_path):
    options = ["--dataset", fmnist_npz, *SMALL]
    assert run("fit", *options, "--epochs", 3, "--out", tmp_path / "whole").exit_code == 0
    assert run("fit", *options, "--epochs", 1, "--out", tmp_path / "part").exit_code == 0
    result = run("fit", "--resume", tmp_path / "part", "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output

    def rows(run_dir):
        return [{k: v for k, v in r.items() if k != "train_seconds"}
                for r in csv.DictReader(open(run_dir / "metrics.csv"))]

    assert rows(tmp_path / "whole") == rows(tmp_path / "part")
    from pyro_vae import load

    whole, part = load(tmp_path / "whole"), load(tmp_path / "part")
    for (name, a), b in zip(whole.state_dict().items(), part.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("case, message", [
    ("other-option", "drop --z-dim"),
    ("no-more-epochs", "N > 2"),
    ("no-state", "cannot be resumed"),
    ("corrupted-state", "truncated or corrupted"),
    ("pickled-state", "truncated or corrupted"),
])
def test_resume_refuses_what_it_cannot_continue(case, message, trained_run, tmp_path):
    import pickle

    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    state = target / "training_state.safetensors"
    marker = tmp_path / "pwned"
    args = ["--epochs", 4]
    if case == "other-option":
        args += ["--z-dim", 3]
    elif case == "no-more-epochs":
        args = ["--epochs", 2]
    elif case == "no-state":
        state.unlink()
    elif case == "corrupted-state":
        state.write_bytes(state.read_bytes()[:500])
    else:
        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        state.write_bytes(pickle.dumps(Payload()))
    before = snapshot(target)
    result = run("fit", "--resume", target, *args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], lines
    assert snapshot(target) == before and not marker.exists()


@pytest.mark.parametrize("signum", ["SIGTERM"])  # SIGINT: test_train.py, deterministically
def test_a_signal_saves_the_run_and_resuming_matches_an_uninterrupted_run(
    signum, fmnist_npz, tmp_path
):
    import signal
    import time

    from pyro_vae import fit, load
    from pyro_vae.io.checkpoint import load_training_state

    out = tmp_path / "run"
    options = dict(hidden=(64,), z_dim=8, batch_size=20)
    args = ["--dataset", fmnist_npz, "--hidden", 64, "--z-dim", 8, "--batch-size", 20]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.cli", "fit", *map(str, args), "--epochs", "40",
         "--quiet", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later epoch
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "--resume" in err.strip().splitlines()[-1]
    state = load_training_state(out)
    epoch = state["progress"].get("partial", {}).get("epoch", state["progress"]["epoch"] + 1)
    load(out)  # the weights of the last finished epoch load
    result = run("fit", "--resume", out, "--epochs", epoch, "--quiet")
    assert result.exit_code == 0, result.output
    _, whole = fit(dataset=str(fmnist_npz), epochs=epoch, progress=False, **options)
    resumed = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(resumed) == epoch
    for a, b in zip(resumed, whole):
        assert float(a["test_neg_elbo"]) == pytest.approx(b["test_neg_elbo"], abs=1e-3)
        assert float(a["train_neg_elbo"]) == pytest.approx(b["train_neg_elbo"], abs=1e-3)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_run(fmnist_npz, tmp_path):
    """20 kills at random moments, checkpoint writes included: the survivor always loads and
    resumes. Each round resumes the run the previous kill left."""
    import random
    import signal
    import time

    from pyro_vae import load
    from pyro_vae.io.checkpoint import load_training_state

    out = tmp_path / "run"
    rng = random.Random(0)
    fit_args = [sys.executable, "-m", "pyro_vae.cli", "fit", "--quiet"]
    first = [*fit_args, "--dataset", str(fmnist_npz), "--hidden", "32", "--z-dim", "4",
             "--batch-size", "50", "--epochs", "10000", "--out", str(out)]
    for round_ in range(20):
        command = first if round_ == 0 else [*fit_args, "--resume", str(out), "--epochs", "10000"]
        state = out / "training_state.safetensors"
        before = state.stat().st_mtime_ns if state.exists() else None
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        # Wait until this process has written a checkpoint, then kill it somewhere in the
        # following epochs, checkpoint writes included.
        while time.time() < deadline and (
            not state.exists() or state.stat().st_mtime_ns == before
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        load(out)
        load_training_state(out)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 1, "resuming clears what a killed write left behind"


def test_a_pickle_planted_as_config_json_is_refused_without_running(trained_run, tmp_path):
    import pickle

    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (target / "config.json").write_bytes(pickle.dumps(Payload()))
    result = run("sample", target, "--out", tmp_path / "g.png")
    assert result.exit_code == 1 and "not valid JSON" in result.output
    assert not marker.exists()
