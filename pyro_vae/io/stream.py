"""Data larger than memory: the rows of a ``.npy`` file read through a memory map, batch by
batch, in an order shuffled by blocks of neighbouring rows.

A ``.npy`` file is streamed with ``--stream``, or by default when it is larger than half the
memory available (:func:`should_stream`). Nothing but the rows of the current batch is copied:
the file's pages come through the operating system's page cache, and after every read the
mapping is told to let go of its pages (``madvise(MADV_DONTNEED)``; they stay in the page
cache), so the resident memory of the process stays bounded whatever the file's size. Releasing
after every read, not after so many bytes, matters: the kernel maps whole folios of the page
cache (up to 2 MB) on a fault, so a few rows read far apart map most of the file.

Rows are returned in the storage convention of :mod:`pyro_vae.io.data`: uint8 grey levels,
bool binary values, float32 values (floats and counts).
"""

from __future__ import annotations

import math
import mmap
import os

import numpy as np
import torch

from ..errors import DataError

#: Stream a .npy file by default when it is larger than this fraction of the available memory.
STREAM_FRACTION = 0.5
#: Rows are shuffled in blocks of about this many bytes of neighbouring rows…
BLOCK_BYTES = 1 << 20
#: … and the blocks in windows of this many blocks, whose rows are shuffled together.
WINDOW_BLOCKS = 64
#: Values per chunk when a whole file is checked or gathered (16 MB as float32).
CHUNK_VALUES = 1 << 22


def available_memory() -> int | None:
    """The memory the system can give without swapping (Linux's ``MemAvailable``), in bytes,
    or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def should_stream(path: str, stream: bool | None) -> bool:
    """Whether to stream the .npy file ``path``: ``stream`` when given (``--stream`` or
    ``--no-stream``), else whether the file is larger than :data:`STREAM_FRACTION` of
    :func:`available_memory`.

    Raises
    ------
    DataError
        ``stream`` is True for a file that is not a .npy array.
    """
    npy = path.lower().endswith(".npy") and os.path.isfile(path)
    if stream and not npy:
        raise DataError(f"--stream reads .npy files only, not {path}; save the array with "
                        "numpy.save, or drop --stream")
    if stream is not None or not npy:
        return bool(stream)
    memory = available_memory()
    return memory is not None and os.path.getsize(path) > STREAM_FRACTION * memory


def open_npy(path: str) -> tuple[np.ndarray, mmap.mmap]:
    """The array of a .npy file as a read-only view of a memory map, read without unpickling.

    Raises
    ------
    DataError
        An unreadable or damaged file, Fortran order, or a dtype that needs unpickling.
    """
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
            offset = file.tell()
            size = os.fstat(file.fileno()).st_size
            if dtype.hasobject:
                raise DataError(f"{path} holds Python objects; save numbers with numpy.save")
            if fortran:
                raise DataError(f"{path} is in Fortran order; save numpy.ascontiguousarray(x) "
                                "to stream it")
            count = math.prod(shape)
            if offset + count * dtype.itemsize > size:
                raise DataError(f"{path} is shorter than its header says (a copy cut short?); "
                                "save it again")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}); check the file") from None
    array = np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
    return array, mapped


class MappedRows:
    """Rows of a memory-mapped array, gathered and converted batch by batch.

    Parameters
    ----------
    array : ndarray
        (N, …) view of a memory map (:func:`open_npy`), as the file holds it.
    mapped : mmap.mmap
        The map ``array`` views, whose read pages are released as batches are read.
    kind : str
        How rows are stored once read (:func:`pyro_vae.io.data.store`): ``levels`` (uint8),
        ``binary`` (bool) or ``values`` (float32).
    rows : ndarray, optional
        The file rows these rows are, ascending (e.g. the training part of a hold-out split);
        all by default.
    arrange : callable, optional
        (k, …) rows as read → (k, …) rows as the model sees them (e.g. channels moved first),
        applied to each batch read.
    """

    def __init__(self, array: np.ndarray, mapped: mmap.mmap, kind: str,
                 rows: np.ndarray | None = None, arrange=None):
        self.array, self.mapped, self.kind, self.arrange = array, mapped, kind, arrange
        self.rows = np.arange(array.shape[0]) if rows is None else np.asarray(rows, np.int64)
        self.width = math.prod(array.shape[1:])
        self.row_bytes = self.width * array.dtype.itemsize

    @property
    def shape(self) -> tuple[int, int]:
        """(N, D): rows and values per row, as a flattened tensor's."""
        return (len(self.rows), self.width)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        """Rows are read on the CPU and moved batch by batch."""
        return torch.device("cpu")

    def to(self, device) -> "MappedRows":
        """The rows stay in the file; batches go to ``device`` as they are read."""
        return self

    def cpu(self) -> "MappedRows":
        """The rows stay in the file, and are read on the CPU."""
        return self

    def __getitem__(self, key) -> "MappedRows | torch.Tensor":
        """A slice → the :class:`MappedRows` of those rows (nothing read); integer positions
        (a tensor or array) → those rows read, (k, D) in the storage convention."""
        if isinstance(key, slice):
            return self.subset(key)
        positions = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        return self._read_rows(self.rows[positions])

    def subset(self, positions) -> "MappedRows":
        """The :class:`MappedRows` of these positions (a slice, or ascending integers); nothing
        is read."""
        return MappedRows(self.array, self.mapped, self.kind, self.rows[positions],
                          self.arrange)

    def _read_rows(self, rows: np.ndarray) -> torch.Tensor:
        from .data import store  # the storage convention lives with the in-memory data

        block = np.take(self.array, rows, axis=0)  # the array is contiguous: no whole copy
        if self.arrange is not None and len(rows):
            block = self.arrange(block)
        stored = store(block.reshape(len(rows), self.width), self.kind)  # a copy
        self.release()
        return stored

    def release(self) -> None:
        """Let the operating system drop the pages read so far from this process's memory
        (they stay in the page cache, so reading them again is cheap)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self.mapped.madvise(mmap.MADV_DONTNEED)

    def chunks(self):
        """All rows, in order, as stored tensors of at most :data:`CHUNK_VALUES` values, each
        read from at most as many rows of the file (rows far apart, such as every 100th, are
        read a few at a time: each read maps whole folios of the file around the rows it
        touches)."""
        span = max(1, CHUNK_VALUES // max(1, self.width))
        if not len(self.rows):
            return
        stretch = (self.rows - self.rows[0]) // span  # ascending rows: stretches of the file
        edges = np.flatnonzero(np.diff(stretch)) + 1
        for part in np.split(self.rows, edges):
            for start in range(0, len(part), span):
                yield self._read_rows(part[start : start + span])

    def gather(self) -> torch.Tensor:
        """All rows read into memory (for a test set), (N, D) in the storage convention."""
        parts = list(self.chunks())
        return torch.cat(parts) if parts else self._read_rows(self.rows[:0])

    def order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A permutation of the positions 0…N−1 shuffled by blocks: blocks of about
        :data:`BLOCK_BYTES` of neighbouring rows in random order, and the rows of each window
        of :data:`WINDOW_BLOCKS` blocks in random order, so that each batch is read from a
        few contiguous stretches of the file. Drawn from torch's global RNG unless a
        ``generator`` is given."""
        return block_order(len(self.rows), max(1, BLOCK_BYTES // max(1, self.row_bytes)),
                           WINDOW_BLOCKS, generator)


def block_order(n: int, block: int, window: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A permutation of 0…n−1: blocks of ``block`` consecutive positions in random order, then
    the positions within each run of ``window`` blocks shuffled together."""
    blocks = torch.arange(n).split(block)
    picked = torch.randperm(len(blocks), generator=generator)
    order = torch.cat([blocks[i] for i in picked.tolist()])
    span = block * window
    parts = [part[torch.randperm(len(part), generator=generator)] for part in order.split(span)]
    return torch.cat(parts)
