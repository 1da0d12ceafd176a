"""Property-based tests (hypothesis): bad input at scale.

Whatever option values or array files a user passes, ``pyro-vae fit`` either trains and writes
a run, or stops with exit status ≠ 0 and a clear error line: never a traceback, and never a
change to a run directory it did not finish.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_vae.cli import main
from conftest import snapshot

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
TINY = ["--hidden", "8", "--z-dim", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny_npz(fmnist_small, tmp_path_factory) -> Path:
    """96 training and 32 test images of Fashion-MNIST as uint8 with labels, like a user's
    file."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"

    def as_uint8(x):
        return (x * 255).round().astype("uint8").reshape(-1, 28, 28)

    np.savez(path, x_train=as_uint8(fmnist_small.train[:96].numpy()),
             x_test=as_uint8(fmnist_small.test[:32].numpy()),
             y_train=fmnist_small.train_labels[:96].numpy(),
             y_test=fmnist_small.test_labels[:32].numpy())
    return path


@pytest.fixture(scope="module")
def old_run(tiny_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("old") / "run"
    result = CliRunner().invoke(main, ["fit", "--dataset", str(tiny_npz), "--epochs", "1",
                                       "--batch-size", "32", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def check_outcome(result, out: Path, before: dict | None) -> None:
    """The invariant: a finished run, or one clear error line and nothing changed."""
    assert "Traceback" not in result.output, result.output
    event(f"exit status {result.exit_code}")  # shown by pytest --hypothesis-show-statistics
    if result.exit_code == 0:
        assert (out / "model.safetensors").is_file() and (out / "metrics.csv").is_file()
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit), result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and len(lines[-1]) > 20, result.output
    if result.exit_code == 1:  # our own checks: one line (after any --skip-nonfinite notes)
        assert all("batch skipped" in line for line in lines[:-1]), result.output
    if before is None:
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    else:
        assert snapshot(out) == before


def numbers(valid, huge: bool = True):
    """Valid values, plus the invalid ones users type: zero, negatives, NaN, ±inf, huge,
    fractions where whole numbers belong, words. (A huge --epochs is valid, just long.)"""
    bad = ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e400", "1.5", "abc", ""]
    if huge:
        bad += ["99999999999999999999999", "1000000000"]
    return st.one_of(valid.map(str), st.sampled_from(bad))


OPTIONS = {
    "--epochs": numbers(st.integers(1, 2), huge=False),
    "--batch-size": numbers(st.integers(1, 10**9)),
    "--lr": numbers(st.floats(1e-6, 1e6)),
    "--z-dim": numbers(st.integers(1, 8)),
    "--hidden": numbers(st.integers(1, 16)),
    "--particles": numbers(st.integers(1, 3)),
    "--beta": numbers(st.floats(1e-3, 1e3)),
    "--kl-warmup": numbers(st.integers(0, 3)),
    "--clip-norm": numbers(st.floats(1e-3, 1e3)),
    "--seed": numbers(st.integers(0, 2**32 + 5)),
    "--limit": numbers(st.integers(1, 200)),
    "--obs-scale": numbers(st.floats(1e-3, 10)),
    "--prior-scale": numbers(st.floats(1e-3, 10)),
    "--prior-components": numbers(st.integers(1, 4)),
    "--flows": numbers(st.integers(1, 3)),
    "--contractive": numbers(st.floats(1e-3, 1.0)),
    "--skip-nonfinite": numbers(st.integers(0, 3)),
    "--checkpoint-every": numbers(st.integers(1, 4)),
    "--corrupt": st.sampled_from(["gaussian:0.1", "mask:0.5", "mask:1", "gaussian:-1",
                                  "salt:0.1", "gaussian", ""]),
    "--prior": st.sampled_from(["normal", "laplace", "studentt", "mog", "vamp", "flow", "none",
                                "cauchy"]),
    "--likelihood": st.sampled_from(["bernoulli", "continuous-bernoulli", "normal",
                                     "normal-learned", "laplace", "categorical", "poisson"]),
    "--guide": st.sampled_from(["normal", "iaf", "delta", "gp"]),
    "--elbo": st.sampled_from(["trace", "meanfield", "iwae", "iwae-dreg", "tc", "tmc"]),
    "--kl-schedule": st.sampled_from(["cyclical:2,0.5", "cyclical:1,1", "cyclical:0,0.5",
                                      "cyclical:2", "linear:3", "cyclical:a,b", ""]),
    "--free-bits": numbers(st.floats(1e-3, 10)),
    "--binarize": st.sampled_from(["dynamic", "static", "none", "maybe"]),
    "--arch": st.sampled_from(["mlp", "conv", "linear", "rnn"]),
    "--condition": st.sampled_from(["label", "age", "a,,b", "label,age", ""]),
    "--labelled": st.one_of(numbers(st.integers(1, 100)), st.sampled_from(["all", "²", "ALL"])),
    "--classifier-weight": numbers(st.floats(1e-3, 1e4)),
}


@SETTINGS
@given(chosen=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=5)
       .flatmap(lambda d: st.fixed_dictionaries({k: OPTIONS[k] for k in d})),
       replace_old=st.booleans())
def test_any_fit_options_train_or_fail_cleanly(chosen, replace_old, tiny_npz, old_run,
                                               tmp_path_factory):
    args = ["fit", "--dataset", str(tiny_npz), *TINY]
    for flag, default in (("--epochs", "1"), ("--batch-size", "32")):
        if flag not in chosen:
            args += [flag, default]
    for flag, value in chosen.items():
        args += [flag, value]
    if replace_old:
        out = tmp_path_factory.mktemp("case") / "run"
        shutil.copytree(old_run, out)
        args += ["--out", str(out), "--overwrite"]
        before = snapshot(out)
    else:
        out = tmp_path_factory.mktemp("case") / "new"
        args += ["--out", str(out)]
        before = None
    check_outcome(CliRunner().invoke(main, args), out, before)


DTYPES = st.sampled_from(["uint8", "int8", "int16", "int64", "float16", "float32", "float64",
                          "bool", "complex64"])


@st.composite
def user_arrays(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(st.one_of(
        st.sampled_from([(40, 28, 28), (40, 784), (40, 6, 6), (40, 36), (3, 36), (1, 36),
                         (0, 36), (40,), (), (40, 4, 6, 6), (40, 0)]),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12)))
    if dtype.kind == "f":
        elements = st.one_of(st.floats(0, 1, width=dtype.itemsize * 8),
                             st.floats(allow_nan=True, allow_infinity=True,
                                       width=dtype.itemsize * 8))
        fill = draw(st.sampled_from([0.5, np.nan, np.inf, -1.0, 1e30, 255.0]))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
        fill = draw(st.sampled_from([0, 1, min(255, int(info.max)), int(info.max)]))
    else:
        elements, fill = None, None
    return draw(hnp.arrays(dtype, shape, elements=elements,
                           fill=st.just(fill) if fill is not None else None))


@SETTINGS
@given(train=user_arrays(), test=st.none() | user_arrays(),
       container=st.sampled_from(["npy", "npz", "npz-bad-key", "pickle"]),
       likelihood=st.sampled_from(["bernoulli", "normal", "categorical"]))
def test_any_array_file_trains_or_fails_cleanly(train, test, container, likelihood,
                                                tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    if container == "npy":
        path = folder / "data.npy"
        np.save(path, train)
    elif container == "pickle":  # an object array: np.save writes a pickle, never loaded
        path = folder / "data.npy"
        np.save(path, np.array([train, None], dtype=object), allow_pickle=True)
    else:
        path = folder / "data.npz"
        key = "x_train" if container == "npz" else "images"
        np.savez(path, **{key: train}, **({"x_test": test} if test is not None else {}))
    out = folder / "run"
    result = CliRunner().invoke(main, ["fit", "--dataset", str(path), "--likelihood", likelihood,
                                       "--epochs", "1", "--batch-size", "16", *TINY,
                                       "--out", str(out)])
    check_outcome(result, out, None)
