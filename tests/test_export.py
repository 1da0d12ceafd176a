"""pyro-vae export: ONNX and TorchScript files of the decoder and encoder, with JSON sidecars,
run with onnxruntime and torch.jit.load against the PyTorch model (issue 14)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ConfigError, fit, load
from pyro_vae.errors import RunDirError
from pyro_vae.io.export import export_run

from conftest import cli

SMALL = dict(hidden=(32,), z_dim=4, epochs=1, batch_size=100, progress=False)


def run_onnx(path, inputs: dict):
    session = onnxruntime.InferenceSession(str(path))
    return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy()
                                                             for k, v in inputs.items()})]


def run_torchscript(path, inputs: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return list(module(*inputs.values()))


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def reference(vae, part, inputs):
    """What the PyTorch model gives for the exported part's inputs."""
    y = inputs.get("y")
    if part == "encoder":
        return list(vae.encode(inputs["x"], y))
    with torch.no_grad():
        params = vae.decoder_params(inputs["z"], vae.condition_vector(y))
        base = vae.likelihood(params)
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
    names = json.loads((inputs["_sidecar"]).read_text())["outputs"]
    values = [getattr(base, o["name"]) for o in names[:-1]]
    return [*values, vae.decode(inputs["z"], y)]


@pytest.mark.parametrize("case", ["bernoulli", "label-conditioned", "categorical",
                                  "normal-learned", "delta guide"])
def test_exports_round_trip_to_1e_5_of_the_pytorch_model(case, fmnist_npz, tmp_path):
    options = {
        "bernoulli": {}, "label-conditioned": {"condition": "label"},
        "categorical": {"likelihood": "categorical"},
        "normal-learned": {"likelihood": "normal-learned"}, "delta guide": {"guide": "delta"},
    }[case]
    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, limit=500, **SMALL, **options)
    vae = load(run)
    x = torch.rand(7, 784)  # another batch size than the export traced
    z = torch.randn(7, 4)
    y = torch.arange(7) % 10 if case == "label-conditioned" else None
    for fmt, runner, suffix in [("onnx", run_onnx, ".onnx"),
                                ("torchscript", run_torchscript, ".torchscript.pt")]:
        written = export_run(run, fmt, "both", out=tmp_path / fmt)
        assert sorted(p.name for p in written) == sorted(
            [f"decoder{suffix}", f"decoder.{fmt}.json", f"encoder{suffix}",
             f"encoder.{fmt}.json"])
        for part, first in [("decoder", {"z": z}), ("encoder", {"x": x})]:
            sidecar = tmp_path / fmt / f"{part}.{fmt}.json"
            meta = json.loads(sidecar.read_text())
            inputs = {**first, **({"y": y} if y is not None else {})}
            assert [i["name"] for i in meta["inputs"]] == list(inputs)
            assert meta["inputs"][0]["shape"][0] == "batch"
            outputs = runner(tmp_path / fmt / meta["file"], inputs)
            expected = reference(vae, part, {**inputs, "_sidecar": sidecar})
            assert len(outputs) == len(meta["outputs"]) == len(expected)
            for out, want, described in zip(outputs, expected, meta["outputs"]):
                assert list(out.shape) == [7, *described["shape"][1:]], described["name"]
                close(out, want)
    meta = json.loads((tmp_path / "onnx" / "decoder.onnx.json").read_text())
    names = [o["name"] for o in meta["outputs"]]
    assert names == {"bernoulli": ["logits", "mean"], "label-conditioned": ["logits", "mean"],
                     "categorical": ["logits", "mean"], "normal-learned": ["loc", "scale", "mean"],
                     "delta guide": ["logits", "mean"]}[case]
    assert meta["likelihood"] == options.get("likelihood", "bernoulli") and meta["epoch"] == 1


def test_export_refuses_what_it_cannot_write_and_never_overwrites(fmnist_npz, tmp_path):
    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, limit=300, guide="iaf", **SMALL)
    with pytest.raises(ConfigError, match="export --part decoder"):
        export_run(run, "onnx", "encoder")
    export_run(run, "torchscript", "decoder")
    before = (run / "export" / "decoder.torchscript.json").read_bytes()
    with pytest.raises(RunDirError, match="add --overwrite"):
        export_run(run, "torchscript", "decoder")
    assert (run / "export" / "decoder.torchscript.json").read_bytes() == before
    result = cli("export", str(run), "--format", "onnx", "--part", "encoder")
    assert result.exit_code == 1 and result.output.startswith("Error: the iaf guide")
    assert "Traceback" not in result.output
    # fit --overwrite removes the old run's exports with its other files.
    fit(dataset=str(fmnist_npz), out=run, limit=300, overwrite=True, **SMALL)
    assert not (run / "export").exists()


def test_a_count_likelihoods_decoder_is_refused_where_it_reads_the_library_size(tmp_path):
    counts = np.random.default_rng(0).poisson(3.0, size=(300, 12)).astype(np.int64)
    np.save(tmp_path / "counts.npy", counts)
    fit(dataset=str(tmp_path / "counts.npy"), out=tmp_path / "run", likelihood="poisson",
        **SMALL)
    with pytest.raises(ConfigError, match="library size.*--library none"):
        export_run(tmp_path / "run", "onnx", "decoder")
    for likelihood in ("negbinomial", "zinb"):
        fit(dataset=str(tmp_path / "counts.npy"), out=tmp_path / likelihood,
            likelihood=likelihood, **SMALL)
        with pytest.raises(ConfigError, match="library size"):
            export_run(tmp_path / likelihood, "torchscript", "both")
        assert not (tmp_path / likelihood / "export").exists()
    written = export_run(tmp_path / "run", "torchscript", "encoder")
    assert [p.name for p in written] == ["encoder.torchscript.pt", "encoder.torchscript.json"]


@pytest.mark.parametrize("likelihood,names", [
    ("poisson", ["rate", "mean"]), ("negbinomial", ["total_count", "logits", "mean"]),
    ("zinb", ["total_count", "logits", "gate_logits", "mean"])])
def test_a_count_decoder_without_the_library_size_exports_its_density(likelihood, names,
                                                                      tmp_path):
    """With --library none, p(x|z) is a function of z alone: the exported parameters, put into
    the distribution the sidecar names, give the model's log p(x|z) for real counts."""
    import statsmodels.datasets as datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = datasets.randhie.load_pandas().data  # RAND health insurance: doctor visits
    columns = ["mdvis", "idp", "hlthg", "hlthf", "hlthp"]  # visits and four 0/1 indicators
    counts = table[columns].to_numpy().astype(np.int64)[:600]
    np.save(tmp_path / "visits.npy", counts)
    run = tmp_path / "run"
    fit(dataset=str(tmp_path / "visits.npy"), out=run, likelihood=likelihood, library="none",
        **SMALL)
    vae = load(run)
    z = torch.randn(6, 4)
    x = torch.tensor(counts[:6], dtype=torch.float32)
    with torch.no_grad():
        model_density = vae.observation(vae.decoder_params(z)).log_prob(x)
    for fmt, runner in (("onnx", run_onnx), ("torchscript", run_torchscript)):
        export_run(run, fmt, "decoder")
        meta = json.loads((run / "export" / f"decoder.{fmt}.json").read_text())
        assert [o["name"] for o in meta["outputs"]] == names
        assert meta["inputs"][0]["description"].startswith("latent code")
        outputs = runner(run / "export" / meta["file"], {"z": z})
        exported = {
            "poisson": lambda rate, mean: dist.Poisson(rate),
            "negbinomial": lambda n, logits, mean: dist.NegativeBinomial(n, logits=logits),
            "zinb": lambda n, logits, gate, mean: dist.ZeroInflatedNegativeBinomial(
                n, logits=logits, gate_logits=gate)}[likelihood](*outputs)
        torch.testing.assert_close(exported.log_prob(x).sum(-1), model_density, rtol=1e-5,
                                   atol=1e-4)
        close(outputs[-1], vae.decode(z))


def test_a_semi_supervised_runs_classifier_exports_with_its_encoder(fmnist_npz, tmp_path):
    """--part both of a --labelled run writes q(y|x) beside q(z|x, y), which needs its y; the
    files give the classifier's probabilities, and the class it picks, on real images."""
    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, limit=500, labelled=50, **SMALL)
    vae = load(run)
    x = torch.from_numpy(np.load(fmnist_npz)["x_test"][:9].reshape(9, -1) / 255.0).float()
    for fmt, runner in (("onnx", run_onnx), ("torchscript", run_torchscript)):
        written = export_run(run, fmt, "both", out=tmp_path / fmt)
        assert f"classifier.{fmt}.json" in [p.name for p in written]
        meta = json.loads((tmp_path / fmt / f"classifier.{fmt}.json").read_text())
        assert [i["name"] for i in meta["inputs"]] == ["x"]
        assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [
            ("logits", ["batch", 10]), ("probs", ["batch", 10])]
        logits, probs = runner(tmp_path / fmt / meta["file"], {"x": x})
        close(probs, vae.classify(x))
        close(torch.log_softmax(logits, -1), vae.classify(x).log())
        encoder = json.loads((tmp_path / fmt / f"encoder.{fmt}.json").read_text())
        assert "export --part classifier" in encoder["outputs"][0]["description"]
    plain = tmp_path / "plain"
    fit(dataset=str(fmnist_npz), out=plain, limit=300, **SMALL)
    with pytest.raises(ConfigError, match="only a semi-supervised run"):
        export_run(plain, "onnx", "classifier")
    assert not (plain / "export").exists()
    assert [p.name for p in export_run(plain, "onnx", "both")] == [
        "decoder.onnx", "decoder.onnx.json", "encoder.onnx", "encoder.onnx.json"]


def test_a_standardised_table_exports_its_likelihood_in_the_tables_units(tmp_path):
    """normal-learned on a table is standardised inside the model: the exported loc and scale
    are those of p(x|z) in the table's own units, checked by the density they give."""
    import statsmodels.datasets as datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = datasets.macrodata.load_pandas().data
    table.to_csv(tmp_path / "macro.csv", index=False)
    run = tmp_path / "run"
    fit(dataset=str(tmp_path / "macro.csv"), out=run, likelihood="normal-learned", epochs=3,
        hidden=(16,), z_dim=2, progress=False)
    vae = load(run)
    assert vae.scaling is not None and float(vae.scaling.scale.max()) > 100  # e.g. realgdp
    export_run(run, "onnx", "decoder")
    meta = json.loads((run / "export" / "decoder.onnx.json").read_text())
    assert "Normal(0, I)" in meta["inputs"][0]["description"]
    z = torch.randn(5, 2)
    loc, scale, mean = run_onnx(run / "export" / "decoder.onnx", {"z": z})
    x = torch.tensor(table.to_numpy()[:5], dtype=torch.float32)
    with torch.no_grad():
        model_density = vae.observation(vae.decoder_params(z)).log_prob(x)
    exported_density = torch.distributions.Normal(loc.double(), scale.double()).log_prob(
        x.double()).sum(-1)
    torch.testing.assert_close(exported_density.float(), model_density, rtol=1e-5, atol=1e-3)
    close(mean, vae.decode(z))


def test_sidecars_say_what_the_file_does_not_hold(fmnist_npz, tmp_path):
    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, limit=300, latent_layers=2, upper_z_dim=2, **SMALL)
    export_run(run, "torchscript", "decoder")
    meta = json.loads((run / "export" / "decoder.torchscript.json").read_text())
    assert "p(z_1|z_2) and the layers above are not exported" in meta["inputs"][0]["description"]
