"""Folders of image files (PNG, JPEG, …) as uint8 arrays, decoded once and cached.

A folder with subfolders follows torchvision's ``ImageFolder`` convention: each subfolder is a
class, its name the class name (labels are the indices of the sorted names). A folder without
subfolders holds unlabelled images. Files are decoded with Pillow; ``image_size`` resizes the
shorter side to S and crops the centre S×S (torchvision's ``Resize`` and ``CenterCrop``).
Images whose three channels are equal everywhere are read as grey. The decoded array is cached
in ``~/.cache/pyro_vae/folders`` (``$XDG_CACHE_HOME``), keyed by the files' paths, sizes and
modification times and by ``image_size``, so that a folder is decoded once, not every run.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from .files import save_arrays

#: The file types read (torchvision's ``IMG_EXTENSIONS``).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def cache_dir() -> Path:
    """Where decoded folders are kept."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pyro_vae" / "folders"


def list_images(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """The image files of ``folder`` with their class index, and the class names (empty for
    a folder without subfolders). Files of other types are ignored, as torchvision does."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(path, index) for index, name in enumerate(classes)
                 for path in sorted((folder / name).rglob("*")) if _is_image(path)]
    else:
        files = [(path, -1) for path in sorted(folder.iterdir()) if _is_image(path)]
    return files, classes


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def read_folder(path: str, image_size: int | None = None, strict: bool = False,
                progress: bool = True) -> dict[str, np.ndarray]:
    """The images of folder ``path`` as ``x_train`` (N, C, H, W) or (N, H, W) uint8 and, with
    class subfolders, ``y_train`` (N,) int64.

    Raises
    ------
    DataError
        No image files; unreadable files with ``strict`` (without it they are skipped, and
        named in one warning); images of different sizes without ``image_size``.
    """
    folder = Path(path)
    files, classes = list_images(folder)
    if not files:
        raise DataError(f"{folder} holds no image files ({', '.join(EXTENSIONS[:3])}, …); "
                        "give a folder of images, or of one subfolder of images per class")
    key = _cache_key(folder, files, image_size)
    cached = cache_dir() / f"{key}.npz"
    arrays = _read_cache(cached)
    if arrays is not None:
        _report_broken(folder, arrays.pop("broken").tolist(), strict)
        return arrays
    images, labels, broken = _decode(files, image_size, progress)
    broken = [str(p.relative_to(folder)) for p in broken]
    _report_broken(folder, broken, strict)
    if not images:
        raise DataError(f"none of the {len(files)} image files in {folder} can be read")
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
        raise DataError(f"the images in {folder} have {len(sizes)} different sizes (e.g. "
                        f"{sizes[0][0]}×{sizes[0][1]} and {sizes[-1][0]}×{sizes[-1][1]}); give "
                        "--image-size S to resize and centre-crop them to S×S")
    x = np.stack(images)  # (N, H, W, 3)
    x = x[..., 0] if (x == x[..., :1]).all() else x.transpose(0, 3, 1, 2)
    arrays = {"x_train": np.ascontiguousarray(x)}
    if classes:
        arrays["y_train"] = np.asarray(labels, dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(cached, **arrays, broken=np.asarray(broken, dtype=str))
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs time
        pass
    return arrays


def _read_cache(cached: Path) -> dict[str, np.ndarray] | None:
    if not cached.is_file():
        return None
    try:
        with np.load(cached, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError):
        return None  # a damaged cache entry is decoded again


def _report_broken(folder: Path, broken: list[str], strict: bool) -> None:
    """Refuse (``strict``) or name in one warning the files that could not be decoded."""
    if not broken:
        return
    names = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
    if strict:
        raise DataError(f"{len(broken)} files in {folder} cannot be read as images ({names}); "
                        "remove them, or drop --strict to skip them")
    warnings.warn(f"skipped {len(broken)} unreadable files in {folder}: {names}", stacklevel=3)


def class_names(path: str) -> list[str] | None:
    """The class names of an image folder with class subfolders, else None."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return list_images(folder)[1] or None


def _cache_key(folder: Path, files, image_size) -> str:
    digest = hashlib.sha256(f"v1 {image_size}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{label}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _decode(files, image_size, progress):
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    if image_size is not None:
        from torchvision.transforms import CenterCrop, Resize

        resize, crop = Resize(image_size), CenterCrop(image_size)
    images, labels, broken = [], [], []
    for path, label in tqdm(files, desc="decoding images", unit="img", disable=not progress,
                            leave=False):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            broken.append(path)
            continue
        if image_size is not None:
            image = crop(resize(image))
        images.append(np.asarray(image, dtype=np.uint8))
        labels.append(label)
    return images, labels, broken
