"""A stand-in for Google Cloud Storage: `gs://BUCKET/KEY` is the local file ROOT/BUCKET/KEY.

`install(root, monkeypatch)` (or the `fake_gcs` fixture below) makes, in this process:

- fsspec's `gs` / `gcs` protocols a directory-backed filesystem (what gcsfs would be),
  and epath use fsspec for `gs://` (not TensorFlow's gfile, which would call Google);
- Orbax's TensorStore kvstore for a `gs://` checkpoint directory TensorStore's `file`
  driver at the same local place (TensorStore's `gcs` driver speaks HTTP to Google and
  cannot be pointed at fsspec), and Orbax's hierarchical-namespace query (a
  google-cloud-storage call) answer "no".

So every tokenkit and Orbax code path that branches on `gs://` runs, with `gs://` URLs
throughout, and the bytes land in ROOT. What stays untested is the network half: gcsfs's
and TensorStore's HTTP clients and GCS's consistency model.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOLS = ("gs", "gcs")


class LocalBucketFileSystem(DirFileSystem):
    """`gs://b/k` <-> `ROOT/b/k`; listings answer `b/k`, as gcsfs does."""

    protocol = PROTOCOLS
    root_marker = ""
    cachable = False
    ROOT: Path | None = None

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's keyword
        del args, finalize_on_close
        if self.ROOT is None:
            raise RuntimeError("fake_gcs.install(root) was not called.")
        super().__init__(path=str(self.ROOT), fs=LocalFileSystem(), **kwargs)

    @property
    def path(self) -> str:  # the root of the current install, even for cached instances
        return str(type(self).ROOT)

    @path.setter
    def path(self, value: str) -> None:
        del value

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, (list, tuple)):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        for protocol in PROTOCOLS:
            if path.startswith(protocol + "://"):
                path = path[len(protocol) + 3:]
        return path.rstrip("/")


def local_path(url: str) -> Path:
    """Where the fake keeps `gs://...`."""
    return LocalBucketFileSystem.ROOT / LocalBucketFileSystem._strip_protocol(url)


def install(root: Path, monkeypatch) -> None:
    """Installs the fake for the rest of the test (undone by `monkeypatch`)."""
    from etils.epath import gpath
    from orbax.checkpoint._src.path import gcs_utils

    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(LocalBucketFileSystem, "ROOT", root)
    for protocol in PROTOCOLS:
        fsspec.register_implementation(protocol, LocalBucketFileSystem, clobber=True)
    # epath picks TensorFlow's gfile for gs:// whenever TensorFlow is importable.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(
        gcs_utils, "get_kvstore_for_gcs",
        lambda ckpt_path: {"driver": "file", "path": str(local_path(ckpt_path))},
    )
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch) -> Path:
    """The fake installed for one test; its root (where `gs://...` files land)."""
    root = tmp_path / "fake_gcs"
    install(root, monkeypatch)
    return root
