"""`SHA256SUMS` files for the tiny world's generated directories."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def write_checksums(directory: Path, files: Iterable[Path]) -> Path:
    """Writes `SHA256SUMS` (sha256sum format, paths relative to `directory`, sorted)."""
    lines = []
    for path in sorted(files, key=lambda p: p.relative_to(directory).as_posix()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(directory).as_posix()}\n")
    sums = directory / "SHA256SUMS"
    sums.write_text("".join(lines), encoding="utf-8", newline="\n")
    return sums
