"""GGUF files (llama.cpp's single-file format) as model and tokenizer inputs.

Wherever tokenkit accepts a model or tokenizer directory it also accepts a path to a
`.gguf` file. The file is converted once into an ordinary Hugging Face directory
(config.json + float32 `model.safetensors`, or the tokenizer files) through
transformers' own GGUF reader, which dequantizes every tensor; later loads read the
converted copy. Conversions live in `<cache root>/gguf/<file stem>-<key>/{model,tokenizer}`
where the key hashes the file's resolved path, size and modification time, so an edited
or replaced file is converted again and an unchanged one never is.

The cache root is `$TOKENKIT_CACHE`, else `~/.cache/tokenkit`.

transformers marks a model loaded from GGUF as quantized and refuses to save it; the
converter copies its (already dequantized) weights into a model built from the same
config without the quantization entry and saves that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from absl import logging

GGUF_SUFFIX = ".gguf"
_MAGIC = b"GGUF"
CACHE_ENV = "TOKENKIT_CACHE"
_DONE = "conversion.json"  # written last: a directory without it is incomplete
_FORMAT = 1  # bump when a conversion changes, so cached ones are redone


def cache_root() -> Path:
    """`$TOKENKIT_CACHE` if set, else `~/.cache/tokenkit`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "tokenkit"


@dataclasses.dataclass(frozen=True)
class GgufHeader:
    """The fixed-size start of a GGUF file."""

    version: int
    tensor_count: int
    kv_count: int


def is_gguf_path(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an existing file ending in `.gguf` (the files we convert)."""
    p = Path(path).expanduser()
    return p.suffix.lower() == GGUF_SUFFIX and p.is_file()


def read_header(path: str | os.PathLike[str]) -> GgufHeader:
    """Reads the magic, version and counts without parsing the (possibly large) metadata.

    Raises:
      ValueError: the file does not start with the GGUF magic or is too short.
    """
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != _MAGIC:
        raise ValueError(
            f"{os.fspath(path)!r} is not a GGUF file (expected it to start with {_MAGIC!r}, "
            f"found {head[:4]!r})."
        )
    version, tensors, kvs = struct.unpack("<IQQ", head[4:24])
    return GgufHeader(version=version, tensor_count=tensors, kv_count=kvs)


# --------------------------------------------------------------------------------------
# Conversion


def _require_readers() -> None:
    """transformers reads GGUF through the `gguf` package and dequantizes with torch."""
    import importlib.util

    missing = [name for name in ("gguf", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Reading GGUF files needs {' and '.join(missing)} (not installed): "
            "pip install 'tokenkit[gguf]' (gguf, accelerate, torch; the CPU build of torch "
            "is enough)."
        )


@contextlib.contextmanager
def _alone(path: Path) -> Iterator[tuple[str, str]]:
    """(directory, file name) of a link to `path` in an otherwise empty directory.

    transformers reads a GGUF file as `(directory, gguf_file)` and prefers tokenizer or
    config files it finds in that directory over the GGUF's own metadata; a GGUF next
    to a converted copy (or any HF files) would silently load those instead.
    """
    with tempfile.TemporaryDirectory(prefix="tokenkit-gguf-") as tmp:
        link = Path(tmp) / path.name
        link.symlink_to(path)
        yield tmp, link.name


def load_torch_model(path: str | os.PathLike[str]) -> Any:
    """The GGUF model as a float32 transformers model (every tensor dequantized).

    Raises:
      ValueError: the file holds no tensors (a vocabulary-only GGUF).
    """
    _require_readers()
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path).expanduser().resolve()
    header = read_header(path)
    if header.tensor_count == 0:
        raise ValueError(
            f"{str(path)!r} holds no tensors (a vocabulary-only GGUF); it can be loaded as a "
            "tokenizer, not as a model."
        )
    logging.info("Reading and dequantizing %s (%d tensors).", path, header.tensor_count)
    start = time.perf_counter()
    with _alone(path) as (directory, name):
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    logging.info("Loaded %s from GGUF in %.1fs.", type(model).__name__, time.perf_counter() - start)
    return model.eval()


def unquantized_copy(model: Any) -> Any:
    """The same weights in a model whose config has no `quantization_config` (savable).

    The copy is built on the meta device and takes over the original's tensors, so no
    second copy of the weights is made.
    """
    import torch
    from transformers import AutoModelForCausalLM

    values = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    values["architectures"] = [type(model).__name__]
    values["dtype"] = "float32"
    config = type(model.config).from_dict(values)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    return plain.eval()


def save_model(model: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Writes config.json (no quantization entry) and float32 safetensors of a GGUF-loaded model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unquantized_copy(model).save_pretrained(str(out), safe_serialization=True)
    return out


def convert_model(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """GGUF model file -> HF checkpoint directory (config.json + float32 safetensors)."""
    return save_model(load_torch_model(path), out_dir)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser().resolve()
    read_header(path)  # a clear error for a non-GGUF file before transformers' own
    _require_readers()
    logging.info("Building the tokenizer of %s.", path)
    start = time.perf_counter()
    with _alone(path) as (directory, name):
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    logging.info(
        "Built %s (%d tokens) in %.1fs.",
        type(tokenizer).__name__, len(tokenizer), time.perf_counter() - start,
    )
    return tokenizer


def convert_tokenizer(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """GGUF file -> HF tokenizer directory (tokenizer.json, tokenizer_config.json, template).

    The directory holds exactly the file's tokens: see `drop_invented_tokens`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_tokenizer(path).save_pretrained(str(out))
    drop_invented_tokens(out)
    return out


def drop_invented_tokens(tokenizer_dir: str | os.PathLike[str]) -> list[str]:
    """Removes added tokens numbered past the file's vocabulary from a saved tokenizer.

    transformers' byte-level GGUF tokenizer falls back to GPT-2's `<|endoftext|>` as its
    unknown token and appends it when the vocabulary lacks it (Llama 3 does), one id past
    the model's embedding matrix. Every token of a GGUF file is in the tokenizer model's
    vocabulary, so an added token with a larger id came from the converter, not the file.
    Returns the removed tokens (logged), and clears special-token roles they held.
    """
    directory = Path(tokenizer_dir)
    state_path = directory / "tokenizer.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    size = len(state["model"]["vocab"])
    invented = [t["content"] for t in state["added_tokens"] if t["id"] >= size]
    if not invented:
        return []
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < size]
    state_path.write_text(json.dumps(state, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key, value in config.items():
            if key.endswith("_token") and value in invented:
                config[key] = None
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logging.warning(
        "Dropped %d token(s) the GGUF tokenizer conversion added past the file's %d tokens: %s",
        len(invented), size, invented,
    )
    return invented


# --------------------------------------------------------------------------------------
# The conversion cache


def cache_key(path: str | os.PathLike[str]) -> str:
    """`<stem>-<16 hex>`: the hash covers the resolved path, size and mtime of the file, and
    the converter (this module's format and the transformers release that reads GGUF)."""
    from importlib.metadata import version

    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    identity = [str(resolved), stat.st_size, stat.st_mtime_ns, _FORMAT, version("transformers")]
    digest = hashlib.sha256("\0".join(map(str, identity)).encode()).hexdigest()
    return f"{resolved.stem}-{digest[:16]}"


def _cached(
    path: str | os.PathLike[str],
    what: str,
    convert: Callable[[Path, Path], Path],
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    source = Path(path).expanduser().resolve()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    final = root / cache_key(source) / what
    if (final / _DONE).is_file():
        logging.info("Using the %s converted from %s at %s.", what, source, final)
        return final
    # Convert into a private directory and rename it into place, so a concurrent or
    # interrupted conversion never leaves a half-written directory under the final name.
    tmp = final.with_name(f".{what}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    convert(source, tmp)
    stat = source.stat()
    record = {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "what": what}
    (tmp / _DONE).write_text(json.dumps(record, indent=2) + "\n")
    if final.exists() and not (final / _DONE).is_file():
        shutil.rmtree(final)  # left by a copy or a hand edit: not a finished conversion
    try:
        tmp.rename(final)
    except OSError:
        if not (final / _DONE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    logging.info("Converted the %s of %s into %s in %.1fs.", what, source, final, time.perf_counter() - start)
    return final


def model_dir(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A cached HF checkpoint directory converted from the GGUF model at `path`.

    Args:
      path: a `.gguf` file holding a model.
      cache_dir: where conversions live (default `<cache root>/gguf`).
    """
    return _cached(path, "model", convert_model, cache_dir)


def tokenizer_dir(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A cached HF tokenizer directory converted from the GGUF file at `path`."""
    return _cached(path, "tokenizer", convert_tokenizer, cache_dir)
