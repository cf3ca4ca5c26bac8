r"""Real text nobody here wrote, for training and scoring demos beyond the tiny world.

    python -m tools.real_text                     # writes data/real/
    python -m tools.real_text --out_dir=/tmp/rt   # somewhere else, to compare

Two sources already on any Debian-like machine with Python:

- English: the Python standard library's documentation, rendered as plain text by
  `pydoc` for a fixed, sorted list of modules (`PYDOC_MODULES`). Only the description,
  class and function sections are read; signatures, data values, doctest lines and
  pydoc's own headings are dropped, and a paragraph stays only if it reads as prose.
- Other languages: the operating system's translated man pages
  (`/usr/share/man/<lang>/man*/*.gz`), rendered with `man -l` at a fixed width without
  hyphenation or justification, then cut into paragraphs the same way (headers,
  footers, headings, option tags and command lines dropped).

Each module or man page is a *document*; its split (train / validation / test) is a
hash of its name, so a document never lands in two splits. Paragraphs are
deduplicated across everything (the first occurrence in document order stays).
Outputs: `{train,validation,test}.jsonl` (`{"text", "source", "lang"}` per paragraph),
`pydoc_eval.txt` (12 English test paragraphs, one per line), `SOURCES.json` (every
document: where it came from, package, version, license, split) and `SHA256SUMS`.

The text depends on the Python release and the installed packages' versions, both
recorded in SOURCES.json; a different machine makes different (equally valid) files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import json
import os
import platform
import re
import subprocess
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import app, flags, logging

from tools.tiny_world.checksums import write_checksums
from tools.tiny_world.paths import DATA_DIR

OUT_DIR = DATA_DIR / "real"
SPLITS = ("train", "validation", "test")

# Modules with substantial prose in their docstrings, importable without side effects.
PYDOC_MODULES = tuple(sorted((
    "abc", "argparse", "ast", "base64", "bisect", "bz2", "calendar", "cmd", "codecs",
    "collections", "colorsys", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.message",
    "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect",
    "io", "ipaddress", "itertools", "json", "locale", "logging", "logging.handlers",
    "lzma", "mailbox", "mimetypes", "multiprocessing.pool", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "symtable",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "types", "typing", "unittest.case", "unittest.mock", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zipimport", "zoneinfo",
)))
PYDOC_SECTIONS = ("DESCRIPTION", "CLASSES", "FUNCTIONS")
PYTHON_LICENSE = "PSF-2.0 (Python Software Foundation License; docstrings of the standard library)"

MAN_LANGUAGES = ("de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "sv", "uk", "zh_CN")
MAN_ROOT = Path("/usr/share/man")
# UTF-8 bytes of kept text per language: enough for every split, small in the repository.
MAN_BYTES_PER_LANGUAGE = 140_000
MAN_ENV = {"MANWIDTH": "80", "MANROFFOPT": "-rHY=0 -dAD=l", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}

MIN_CHARS = 60
MAX_CHARS = 3000  # longer paragraphs are lists or tables flattened into one line
EVAL_PARAGRAPHS = 12


@dataclasses.dataclass
class Document:
    """One module or man page: its paragraphs and where it came from."""

    id: str
    lang: str
    paragraphs: list[str]
    provenance: dict

    @property
    def split(self) -> str:
        return split_of(self.id)


def split_of(document_id: str) -> str:
    """70 / 15 / 15 % of documents by the sha256 of their id; never depends on content."""
    bucket = int(hashlib.sha256(document_id.encode()).hexdigest(), 16) % 20
    return "train" if bucket < 14 else "validation" if bucket < 17 else "test"


# --------------------------------------------------------------------------------------
# Paragraphs


def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def reflow(lines: Sequence[str]) -> str:
    """Joins wrapped lines into one (NFC): a space between words, none between CJK characters."""
    out = ""
    for line in (l.strip() for l in lines):
        if not line:
            continue
        # No space between CJK characters, nor after a word broken at its hyphen (`apt-`).
        if out and not (_is_wide(out[-1]) and _is_wide(line[0])) and not re.search(r"\w-$", out):
            out += " "
        out += line
    return unicodedata.normalize("NFC", re.sub(r"[ \t]{2,}", " ", out))


_CODE_CHARS = frozenset("()[]{}<>|=*_`\\$%&^~@")


def reads_as_prose(text: str) -> bool:
    """Long enough, mostly letters, and not code: what a reader would call a paragraph."""
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return False
    # One line for JSONL readers and line-per-paragraph files (`str.splitlines` also
    # breaks at U+2028, form feeds, ...).
    if len(text.splitlines()) != 1 or any(unicodedata.category(c) == "Cc" for c in text):
        return False
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.75 * len(visible) or sum(c in _CODE_CHARS for c in visible) > 0.05 * len(visible):
        return False
    if any(marker in text for marker in (">>>", "{{", "}}", "#!", "\\n")):
        return False
    # Space-separated scripts need a few words; CJK text is judged by letters alone.
    wide = sum(_is_wide(c) for c in visible)
    return wide > len(visible) // 3 or len(text.split()) >= 10


def paragraphs_of(lines: Iterable[str]) -> list[list[str]]:
    """Groups lines into blank-line separated blocks (lines keep their indentation)."""
    blocks, block = [], []
    for line in lines:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    return blocks


# --------------------------------------------------------------------------------------
# pydoc

_PYDOC_DROP = [re.compile(p) for p in (
    r"^(class\s+)?[A-Za-z_][\w.]*\s*\(.*\)\s*(->.*)?:?$",  # a signature
    r"^[A-Za-z_][\w.]*\s*=",  # a data value
    r"^[\w.]+$",  # a bare name (class trees, descriptor names)
    r"^(>>>|\.\.\.)(\s|$)",  # doctest
    r"^[-=~^*]{3,}$",  # rules and reST underlines
    r"(defined here|inherited from .*|resolution order|defined in .*):$",
)]


def pydoc_text(module_name: str) -> str:
    """pydoc's plain-text page of a module (as `pydoc <module>` prints it, unstyled)."""
    import pydoc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
        return pydoc.render_doc(module, renderer=pydoc.plaintext)


def pydoc_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of the description, class and function sections of a pydoc page."""
    kept, section = [], None
    body: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
            continue
        if section in PYDOC_SECTIONS:
            body.append(re.sub(r"^(\s*)\|( {1,2}|$)", r"\1", line))  # class members' `|` gutter
    for block in paragraphs_of(body):
        lines = [l for l in block if not any(p.search(l.strip()) for p in _PYDOC_DROP)]
        # Prose keeps one indentation; deeper lines make it an example, a table or a
        # definition list, and a `#` or `:field:` start makes it a comment or a field list.
        if not lines or len({_indent(l) for l in lines}) > 1 or lines[0].lstrip().startswith(("#", ":")):
            continue
        text_ = reflow(lines)
        if reads_as_prose(text_):
            kept.append(text_)
    return kept


def collect_pydoc(modules: Sequence[str] = PYDOC_MODULES) -> list[Document]:
    version = platform.python_version()
    docs = []
    for name in modules:
        module_file = getattr(importlib.import_module(name), "__file__", None) or ""
        stdlib = Path(module_file).as_posix().split("/lib/")[-1] if module_file else "(built in)"
        docs.append(Document(
            id=f"pydoc/{name}", lang="en", paragraphs=pydoc_paragraphs(pydoc_text(name)),
            provenance={
                "kind": "pydoc", "module": name, "package": f"CPython {version} standard library",
                "version": version, "path": f"lib/{stdlib}" if module_file else stdlib,
                "license": PYTHON_LICENSE,
            },
        ))
    logging.info("pydoc: %d modules, %d paragraphs.", len(docs), sum(len(d.paragraphs) for d in docs))
    return docs


# --------------------------------------------------------------------------------------
# man pages

def render_man(path: Path) -> str:
    """`man -l` of one page at the fixed width, without hyphenation or justification."""
    env = {**os.environ, **MAN_ENV}
    result = subprocess.run(
        ["man", "-l", str(path)], capture_output=True, env=env, cwd=path.parent.parent, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"man -l {path} failed ({result.returncode}): {result.stderr.decode()[:300]}")
    return result.stdout.decode("utf-8", errors="replace")


def man_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a rendered man page."""
    lines = text.splitlines()
    nonblank = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonblank) >= 2:  # the header and footer lines
        lines[nonblank[0]] = lines[nonblank[-1]] = ""
    kept = []
    for block in paragraphs_of(lines):
        # Headings sit left of the body (column 0 or 3); the body starts at column 7.
        block = [l for l in block if _indent(l) >= 7]
        head: list[str] = []
        if block and _SAME_LINE_TAG.match(block[0].strip()):
            # A short tag and its description on one line (`-q     Quiet ...`).
            head, block = [_SAME_LINE_TAG.sub("", block[0].strip())], block[1:]
        elif len(block) > 1 and _indent(block[1]) > _indent(block[0]):
            block = block[1:]  # a tag (an option, a file, a variable) over its description
        base = _indent(block[0]) if block else 0
        # Deeper lines are examples or code; prompts are commands.
        body = head + [l for l in block if _indent(l) == base and not l.strip().startswith(("$ ", "# "))]
        text_ = reflow(body)
        if reads_as_prose(text_):
            kept.append(text_)
    return kept


_SAME_LINE_TAG = re.compile(r"^[-+]\S*(,\s*[-+]\S+)*\s{2,}")  # `-a     do not ignore ...`


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_ENGLISH = frozenset(
    "the and of to that this which with are for you your by from when not be or if can".split()
)


def in_language(text: str, lang: str) -> bool:
    """False for paragraphs a translation left in English (a common sight in man pages).

    Non-Latin scripts: most letters must be non-Latin. Latin scripts: few English
    function words (`the`, `of`, `which`, ...), which are rare in the other languages.
    """
    if lang == "en":
        return True
    letters = [c for c in text if c.isalpha()]
    latin = sum("LATIN" in unicodedata.name(c, "") for c in letters)
    if lang in ("ja", "zh_CN", "zh_TW", "ko", "ru", "uk"):
        return latin < 0.5 * len(letters)
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _ENGLISH for w in words) < 0.1 * max(len(words), 1)


def _debian_packages(paths: Sequence[Path]) -> dict[Path, str]:
    """The Debian package owning each path (`dpkg -S`), or "" where dpkg does not know."""
    if not paths:
        return {}
    result = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True, check=False)
    owners = {}
    for line in result.stdout.splitlines():
        package, _, path = line.partition(": ")
        owners[Path(path)] = package.split(":")[0].split(",")[0].strip()
    return {p: owners.get(p, "") for p in paths}


def _package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def _package_licenses(package: str) -> str:
    """Licenses a Debian copyright file names (DEP-5 `License:` fields)."""
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    if not copyright_file.is_file():
        return "unknown (no copyright file)"
    names = sorted({m.group(1).strip() for m in re.finditer(r"^License:\s*(\S.*)$", copyright_file.read_text(errors="replace"), re.M)})
    listed = ", ".join(names) if names else "not machine-readable"
    return f"{listed} (see {copyright_file})"


def collect_man(lang: str, budget: int = MAN_BYTES_PER_LANGUAGE) -> list[Document]:
    """Man pages of one language in a fixed pseudo-random order, up to `budget` bytes of text."""
    root = MAN_ROOT / lang
    pages = [p for p in root.glob("man*/*.gz") if p.is_file() and not p.is_symlink()]
    pages.sort(key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())
    owners = _debian_packages(pages)
    docs, used = [], 0
    for page in pages:
        if used >= budget:
            break
        with gzip.open(page, "rb") as f:
            if f.read(4) == b".so ":  # a redirect to another page
                continue
        paragraphs = [p for p in man_paragraphs(render_man(page)) if in_language(p, lang)]
        if not paragraphs:
            continue
        name = page.name[: -len(".gz")]
        package = owners[page]
        docs.append(Document(
            id=f"man/{lang}/{page.parent.name}/{name}", lang=lang, paragraphs=paragraphs,
            provenance={
                "kind": "man", "path": str(page), "package": package or "unknown",
                "version": _package_version(package) if package else "",
                "license": _package_licenses(package) if package else "unknown",
            },
        ))
        used += sum(len(p.encode()) for p in paragraphs)
    logging.info("man/%s: %d pages, %d paragraphs, %d bytes.", lang, len(docs),
                 sum(len(d.paragraphs) for d in docs), used)
    return docs


# --------------------------------------------------------------------------------------
# Writing


def deduplicate(documents: Sequence[Document]) -> int:
    """Drops repeated paragraphs (first occurrence wins) and emptied documents, in place."""
    seen: set[str] = set()
    dropped = 0
    for doc in documents:
        unique = []
        for p in doc.paragraphs:
            if p in seen:
                dropped += 1
            else:
                seen.add(p)
                unique.append(p)
        doc.paragraphs = unique
    return dropped


def eval_paragraphs(documents: Sequence[Document], n: int = EVAL_PARAGRAPHS) -> list[str]:
    """`n` English test-split paragraphs of 300+ characters, evenly spread over them."""
    pool = [p for d in documents if d.lang == "en" and d.split == "test" for p in d.paragraphs if len(p) >= 300]
    if len(pool) < n:
        raise ValueError(f"Only {len(pool)} English test paragraphs of 300+ characters; need {n}.")
    return [pool[i * len(pool) // n] for i in range(n)]


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(out_dir: Path, documents: Sequence[Document]) -> list[Path]:
    """Writes the splits, the eval file and the provenance; returns the written files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for split in SPLITS:
        records = ({"text": p, "source": d.id, "lang": d.lang}
                   for d in documents if d.split == split for p in d.paragraphs)
        path = out_dir / f"{split}.jsonl"
        path.write_text(_jsonl(records), encoding="utf-8", newline="\n")
        files.append(path)
    eval_path = out_dir / "pydoc_eval.txt"
    eval_path.write_text("".join(p + "\n" for p in eval_paragraphs(documents)), encoding="utf-8", newline="\n")
    files.append(eval_path)
    sources = {
        "generator": "python -m tools.real_text",
        "python": platform.python_version(),
        "system": _os_name(),
        "settings": {"man_env": MAN_ENV, "man_bytes_per_language": MAN_BYTES_PER_LANGUAGE,
                     "min_chars": MIN_CHARS, "max_chars": MAX_CHARS,
                     "split": "sha256(document id) % 20: 0-13 train, 14-16 validation, 17-19 test"},
        "documents": [
            {"id": d.id, "lang": d.lang, "split": d.split, "paragraphs": len(d.paragraphs),
             "bytes": sum(len(p.encode()) for p in d.paragraphs), **d.provenance}
            for d in documents
        ],
    }
    sources_path = out_dir / "SOURCES.json"
    sources_path.write_text(json.dumps(sources, indent=1, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n")
    files.append(sources_path)
    return files


PASSAGE_CHARS = 1000


def passages(records: Iterable[dict], lang: str = "en", max_chars: int = PASSAGE_CHARS) -> list[dict]:
    """Consecutive paragraphs of one document joined (blank line between) into passages
    of at most `max_chars` characters, for training rows that are not mostly padding (a
    paragraph averages about 160 characters); a longer paragraph is its own passage."""
    out: list[dict] = []
    for record in records:
        if record["lang"] != lang:
            continue
        last = out[-1] if out else None
        if (last is not None and last["source"] == record["source"]
                and len(last["text"]) + 2 + len(record["text"]) <= max_chars):
            last["text"] += "\n\n" + record["text"]
        else:
            out.append(dict(record))
    return out


def write_passages(out_dir: Path, lang: str = "en") -> list[Path]:
    """`<split>_<lang>_passages.jsonl` from the split files already in `out_dir`."""
    files = []
    for split in SPLITS:
        with open(out_dir / f"{split}.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        path = out_dir / f"{split}_{lang}_passages.jsonl"
        path.write_text(_jsonl(passages(records, lang)), encoding="utf-8", newline="\n")
        files.append(path)
    return files


def _os_name() -> str:
    try:
        release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
        return release.get("PRETTY_NAME", "").strip('"') or platform.platform()
    except OSError:
        return platform.platform()


def build(out_dir: Path, languages: Sequence[str] = MAN_LANGUAGES) -> list[Path]:
    """Collects every document, deduplicates, writes `out_dir` and its SHA256SUMS."""
    documents = collect_pydoc()
    for lang in languages:
        documents += collect_man(lang)
    dropped = deduplicate(documents)
    documents = [d for d in documents if d.paragraphs]
    logging.info("Dropped %d repeated paragraphs; %d documents remain.", dropped, len(documents))
    files = write(out_dir, documents)
    files += write_passages(out_dir)
    write_checksums(out_dir, files)
    for path in files:
        logging.info("%s: %d bytes", path, path.stat().st_size)
    return files


FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Only when run as a program: importing this module (tests do) defines no flags.
    flags.DEFINE_string("out_dir", str(OUT_DIR), "Writes the splits, pydoc_eval.txt, SOURCES.json here.")
    flags.DEFINE_list("languages", list(MAN_LANGUAGES), "Man page languages (directories of /usr/share/man).")
    flags.DEFINE_bool("passages_only", False, "Only remake the *_en_passages.jsonl files from the "
                      "split files already in --out_dir (and the checksums).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out_dir = Path(FLAGS.out_dir)
    if FLAGS.passages_only:
        files = [out_dir / f"{split}.jsonl" for split in SPLITS]
        files += [out_dir / "pydoc_eval.txt", out_dir / "SOURCES.json"] + write_passages(out_dir)
        write_checksums(out_dir, files)
        return
    build(out_dir, FLAGS.languages)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
