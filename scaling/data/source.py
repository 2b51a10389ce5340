"""Where the encoded images of a manifest come from: files under a data root, or a pack.

A dataset holds an :class:`ImageSource` and asks it for the bytes of manifest row ``j``:

- :class:`FileSource` reads ``root/path`` (one open and one read per image);
- :class:`PackSource` reads the row from a pack made by ``mimscale subsets pack``
  (:mod:`subsets.pack`; a local folder or a URI such as ``s3://bucket/in1k-pack``),
  a block at a time through a small per-process cache (:class:`subsets.packview.PackView`).

Order: a pack is read fastest in its own block order, so a :class:`PackSource` also
gives the sampler its epoch order (:func:`subsets.shards.epoch_order`: blocks
permuted, rows shuffled within windows of ``window`` blocks; a pure function of
(seed, epoch)) and the evaluation loaders their visiting order (pack order). A file
source leaves both as they were (a plain permutation; manifest order).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from scaling.data.decode import GPU_MODE
from scaling.data.manifest import DataError, Manifest, check_root

PathLike = str | os.PathLike[str]


class FileSource:
    """The manifest's images as files under the data root."""

    def __init__(self, manifest: Manifest, root: PathLike) -> None:
        self.manifest, self.root = manifest, os.fspath(root)

    def where(self, j: int) -> str:
        """The file of row ``j`` (named in bad-image reports)."""
        return os.path.join(self.root, self.manifest.path(j))

    def read(self, j: int) -> bytes:
        with open(self.where(j), "rb") as fh:
            return fh.read()

    def epoch_order(self, seed: int) -> Callable[[int], np.ndarray] | None:
        """None: the sampler's own permutation."""
        return None

    def order_digest(self) -> None:
        """None: the order depends on the manifest alone."""
        return None

    def eval_order(self, indices: np.ndarray) -> np.ndarray:
        return indices


class PackSource:
    """The manifest's images in a pack (every key of the manifest must be in it)."""

    def __init__(
        self, manifest: Manifest, location: PathLike, *, window: int = 4, filesystem: Any = None
    ) -> None:
        from subsets.packview import PackView
        from subsets.shards import open_pack

        if window < 1:
            raise ValueError(f"shard_window: must be ≥ 1, got {window}")
        self.manifest, self.location, self.window = manifest, os.fspath(location), window
        pack = open_pack(self.location, filesystem)  # filesystem: any pyarrow.fs.FileSystem
        self.view = PackView(pack, manifest.keys, str(manifest.source))

    def where(self, j: int) -> str:
        """The image's path and its pack (named in bad-image reports)."""
        return f"{self.manifest.path(j)} in the pack {self.location}"

    def read(self, j: int) -> memoryview:
        return self.view.read(j)

    @property
    def pixels(self) -> bool:
        """The pack holds decoded pixels (``subsets pack --pixels``), not the files."""
        from subsets.packlayout import PIXELS

        return self.view.pack.content == PIXELS

    def close(self) -> None:
        """Release the pack's cached blocks, files and maps (reopened on the next read)."""
        self.view.close()

    def order_digest(self) -> str:
        """What the epoch order takes from the pack: how its blocks partition the manifest's
        rows (packs of other manifests, options or format order them otherwise; a pixel
        pack of the same files does not)."""
        _, dense = np.unique(self.view.blocks, return_inverse=True)
        blocks = dense.reshape(-1).astype("<i8").tobytes()
        return hashlib.blake2b(blocks + str(self.window).encode(), digest_size=16).hexdigest()

    def epoch_order(self, seed: int) -> Callable[[int], np.ndarray]:
        """Epoch → the shard-aware permutation of the manifest's rows."""
        view, window = self.view, self.window
        return lambda epoch: view.epoch_order(seed, epoch, window)

    def eval_order(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` in pack order (each block read once per evaluation)."""
        return indices[np.argsort(self.view.rows[indices], kind="stable")]


ImageSource = FileSource | PackSource


def open_source(
    manifest: Manifest,
    root: PathLike,
    packed: PathLike | None = None,
    *,
    window: int = 4,
    decode: str = "fast",
) -> ImageSource:
    """A pack source when ``packed`` names a pack, else files under ``root`` (checked);
    DataError for ``decode="gpu"`` on a pack of pixels (no JPEG left to decode)."""
    if packed:
        source = PackSource(manifest, packed, window=window)
        if decode == GPU_MODE and source.pixels:
            source.close()
            raise DataError(pixels_refuse_gpu(source.location))
        return source
    check_root(manifest, os.fspath(root))
    return FileSource(manifest, root)


def pixels_refuse_gpu(location: str) -> str:
    return (
        f'pack {location} holds decoded pixels (subsets pack --pixels): decode = "gpu" '
        'has no JPEG to decode in it; use decode = "fast" or "exact" with it (the '
        "same pixels as from the files, without decoding), or a pack made without --pixels"
    )
