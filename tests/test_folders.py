"""Folders of PNG and JPEG photographs (scikit-image's), with class subfolders: decoded once,
cached, resized on request, and their bad files reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pyro_vae.config import DataConfig
from pyro_vae.io import folders
from pyro_vae.io.data import class_names, read_data

from conftest import cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture()
def photos(tmp_path):
    """photos/astronaut/*.png (64 patches of 24×24) and photos/coffee/*.jpg (70 patches)."""
    import skimage.data

    root = tmp_path / "photos"
    for name, suffix in (("astronaut", "png"), ("coffee", "jpg")):
        photo = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True)
        for i in range(0, photo.shape[0] - 24, 48):
            for j in range(0, min(photo.shape[1], 384) - 24, 48):
                Image.fromarray(photo[i:i + 24, j:j + 24]).save(
                    root / name / f"{i:03d}-{j:03d}.{suffix}", quality=95)
    (root / "astronaut" / "notes.txt").write_text("not an image, ignored as torchvision does")
    return root


def test_a_folder_of_class_subfolders_reads_as_labelled_colour_images(photos):
    data = read_data(DataConfig(dataset=str(photos)))
    n_astronaut = len(list((photos / "astronaut").glob("*.png")))
    n_coffee = len(list((photos / "coffee").glob("*.jpg")))
    assert data.data_shape == (3, 24, 24)
    assert data.train.shape[0] + data.test.shape[0] == n_astronaut + n_coffee
    labels = np.concatenate([data.train_labels.numpy(), data.test_labels.numpy()])
    assert np.bincount(labels).tolist() == [n_astronaut, n_coffee]
    assert class_names(str(photos)) == ["astronaut", "coffee"]
    # The PNG files hold the photograph's pixels exactly.
    first = np.asarray(Image.open(sorted((photos / "astronaut").glob("*.png"))[0]))
    arrays = folders.read_folder(str(photos), progress=False)
    assert np.array_equal(arrays["x_train"][0].transpose(1, 2, 0), first)


def test_a_folder_is_decoded_once_then_read_from_the_cache(photos, monkeypatch):
    first = folders.read_folder(str(photos), progress=False)
    assert len(list(folders.cache_dir().glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "_decode", no_decoding)
    again = folders.read_folder(str(photos), progress=False)
    assert np.array_equal(first["x_train"], again["x_train"])
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(photos / "coffee" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):  # the folder changed
        folders.read_folder(str(photos), progress=False)


def test_bad_folders_are_refused_in_one_line_and_unreadable_files_skipped(photos, tmp_path):
    (photos / "coffee" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable files .*broken.jpg"):
        arrays = folders.read_folder(str(photos), progress=False)
    assert arrays["x_train"].shape[0] == len(list(photos.rglob("*.png"))) + len(
        list((photos / "coffee").glob("*.jpg"))) - 1
    result = cli("fit", "--dataset", photos, "--strict", "--out", tmp_path / "run")
    assert result.exit_code == 1 and "cannot be read as images (coffee/broken.jpg)" in \
        result.output, result.output
    (photos / "coffee" / "broken.jpg").unlink()
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(photos / "coffee" / "odd.png")
    result = cli("fit", "--dataset", photos, "--out", tmp_path / "run")
    assert result.exit_code == 1 and "give --image-size S" in result.output, result.output
    # One line, after the progress bar of the decoding (on stderr).
    assert result.output.strip().splitlines()[-1].startswith("Error: the images in")
    assert not (tmp_path / "run").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no image files" in cli("fit", "--dataset", empty, "--out",
                                         tmp_path / "run").output
    np.save(tmp_path / "grey.npy", np.zeros((40, 8, 8), np.uint8))
    assert "apply to folders of images" in cli(
        "fit", "--image-size", 16, "--dataset", tmp_path / "grey.npy", "--out",
        tmp_path / "run").output


def test_an_image_folder_trains_resized_and_draws_its_latent_map(photos, tmp_path):
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(photos / "coffee" / "odd.png")
    out = tmp_path / "run"
    result = cli("fit", "--dataset", photos, "--image-size", 16, "--arch", "conv", "--hidden",
                 32, "--likelihood", "continuous-bernoulli", "--z-dim", 2, "--epochs", 2,
                 "--batch-size", 16, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["data_shape"] == [3, 16, 16]
    result = cli("sample", out, "--mode", "latents", "--out", tmp_path / "map.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "map.png").stat().st_size > 0
