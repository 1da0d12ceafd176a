"""Writing files so that a crash never leaves half of one (no torch: plots use it too)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from ..errors import CheckpointError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
    is renamed over ``path``.

    Raises
    ------
    CheckpointError
        If the disk is full or the folder unwritable; ``path`` is left as it was and the
        temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Mode 0o666 lets the umask decide permissions, as for any other file the user writes.
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path} ({err.strerror or err}); its previous version is intact; "
            "free some disk space or choose a writable folder"
        ) from None


def save_arrays(path: str | os.PathLike, **arrays) -> None:
    """Write NumPy arrays atomically: one array as ``.npy``, several as ``.npz``.

    Raises
    ------
    CheckpointError
        If the file cannot be written.
    """
    buffer = io.BytesIO()
    if str(path).lower().endswith(".npy"):
        (array,) = arrays.values()
        np.save(buffer, array)
    else:
        np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def finite_json(value):
    """NaN and infinities become None (JSON null), in floats and lists of them."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    return value


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """``payload`` as indented JSON (non-finite numbers as null), atomically."""
    text = json.dumps(finite_json(payload), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike):
    """Yield a hidden temporary folder beside ``folder`` and rename it to ``folder`` when the
    block succeeds, so results appear all at once and a failed or interrupted run leaves
    nothing there (``folder`` may exist beforehand only if empty)."""
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.absolute().parent))
    try:
        yield staging
        mask = os.umask(0)  # read the umask by setting and restoring it
        os.umask(mask)
        staging.chmod(0o777 & ~mask)
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
