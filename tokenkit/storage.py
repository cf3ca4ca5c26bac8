"""Locations a run reads and writes: local paths or object-store URLs, one path type.

Workdirs, checkpoints, metrics, exports, the operative config and data files may be
local (`/data/run`, `runs/x`) or remote (`gs://bucket/run`, also `s3://`, `az://`,
`hf://`). Every such location goes through `path()`, which returns an
`etils.epath.Path`: the same pathlib-like API on both (`/`, `open`, `exists`, `glob`,
`read_text`, `mkdir`), and the type Orbax takes for checkpoints, so Orbax writes to
`gs://` directly. `pathlib.Path("gs://bucket/run")` would silently become the local
directory `gs:/bucket/run`; code that may see a remote location never calls it.

Remote files are reached through epath's backends: TensorFlow's `tf.io.gfile` for
`gs://` when TensorFlow is installed (set `EPATH_USE_TF=false` to prefer fsspec), else
fsspec (`gcsfs` for `gs://`, `s3fs` for `s3://`; a missing one is named on first use).
Orbax writes checkpoint arrays to `gs://` with TensorStore's own GCS driver and deletes
old checkpoints there with `google-cloud-storage`.

Writers that need a local file (safetensors, tokenizers, TensorBoard event files)
write into `staged_directory(location)`: the location itself when local, else a
temporary directory uploaded when the block ends.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from absl import logging
from etils import epath

# URL schemes epath can open (the others, e.g. `memory://`, are refused by name).
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")

Location = Union[str, os.PathLike, epath.Path]


def scheme(location: Location) -> str | None:
    """The URL scheme of `location` (`gs` of `gs://b/x`), None for a local path."""
    text = os.fspath(location)
    if "://" not in text:
        return None
    return text.split("://", 1)[0]


def is_remote(location: Location) -> bool:
    """Whether `location` is an object-store URL rather than a local path."""
    return scheme(location) not in (None, "file")


def path(location: Location) -> epath.Path:
    """`location` as an `epath.Path`: remote URLs kept whole, local paths expanded (`~`)
    and made absolute (Orbax needs absolute local paths), `file://` URLs made local.

    Raises:
      ValueError: a URL scheme epath cannot open.
    """
    if isinstance(location, epath.Path) and is_remote(location):
        return location
    text = os.fspath(location)
    kind = scheme(text)
    if kind == "file":
        text = text[len("file://"):]
        kind = None
    if kind is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if kind not in REMOTE_SCHEMES:
        raise ValueError(
            f"Unsupported location {text!r}: the scheme {kind}:// is not one of "
            f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} (or a local path)."
        )
    _require_backend(kind)
    return epath.Path(text)


# fsspec implementations epath needs for each scheme when TensorFlow is absent.
_FSSPEC_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


@functools.cache
def _require_backend(kind: str) -> None:
    """Raises ImportError naming the package a `kind://` location needs, when missing."""
    if kind == "gs" and importlib.util.find_spec("tensorflow") is not None:
        return  # epath reads gs:// through tf.io.gfile
    import fsspec

    try:
        fsspec.get_filesystem_class(kind)
    except (ImportError, ValueError) as e:
        raise ImportError(
            f"{kind}:// locations need the {_FSSPEC_PACKAGES[kind]} package "
            f"(pip install {_FSSPEC_PACKAGES[kind]}): {e}"
        ) from e


def write_text(location: Location, text: str) -> epath.Path:
    """Writes a text file whole; readers never see half of it (a local file is written
    beside its target and renamed; object stores replace objects atomically)."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        target.write_text(text)
        return target
    tmp = target.parent / (target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def upload_tree(local_dir: str | os.PathLike, destination: Location) -> epath.Path:
    """Copies the files under `local_dir` to `destination` (same relative paths),
    replacing files of the same name; other files at the destination stay."""
    dest = path(destination)
    root = Path(local_dir)
    count = 0
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        target = dest / file.relative_to(root).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(file, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
        count += 1
    logging.info("Uploaded %d file(s) from %s to %s.", count, root, dest)
    return dest


def copy_file(local_file: str | os.PathLike, destination: Location) -> None:
    """Copies one local file to `destination` (a file location)."""
    target = path(destination)
    with open(local_file, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)


@contextlib.contextmanager
def staged_directory(location: Location) -> Iterator[Path]:
    """A local directory whose files end up at `location`.

    Local locations are used directly (created); for remote ones the block writes into a
    temporary directory that is uploaded when the block ends without an error.
    """
    if not is_remote(location):
        local = Path(os.fspath(path(location)))
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="tokenkit-stage-") as tmp:
        yield Path(tmp)
        upload_tree(tmp, location)
