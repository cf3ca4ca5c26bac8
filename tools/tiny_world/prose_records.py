"""Splits the hand-written prose of `prose/` into corpus records, deterministically.

Each file `prose/<lang>_<topic>.txt` holds records separated by lines that are exactly
`%%`; a record's text is everything between two separators, byte for byte (spaces, tabs
and blank lines included). Record `k` of a file goes to `validation` when `k % 10 == 3`,
to `test` when `k % 10 == 7`, otherwise to `train`, so every file (and thus every
language and script) appears in every split.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path

PROSE_DIR = Path(__file__).resolve().parent / "prose"
SEPARATOR = "%%"
SPLITS = ("train", "validation", "test")

# Characters that some JSONL readers (str.splitlines) treat as line breaks, and CR, which
# would make line endings ambiguous; the prose must not contain them.
_FORBIDDEN = {"\r": "CR", "\x0b": "VT", "\x0c": "FF", "\x1c": "FS", "\x1d": "GS",
              "\x1e": "RS", "\x85": "NEL", "\u2028": "LINE SEPARATOR",
              "\u2029": "PARAGRAPH SEPARATOR"}


@dataclasses.dataclass(frozen=True)
class ProseRecord:
    text: str
    lang: str
    source: str  # "prose/<file name>"
    index: int  # position within its file

    @property
    def split(self) -> str:
        return split_of(self.index)

    def to_json_dict(self) -> dict[str, str]:
        return {"text": self.text, "lang": self.lang, "source": self.source}


def split_of(index: int) -> str:
    """The split of the `index`-th record of a prose file."""
    if index % 10 == 3:
        return "validation"
    if index % 10 == 7:
        return "test"
    return "train"


def _check_text(text: str, where: str) -> None:
    if not text.strip():
        raise ValueError(f"{where}: empty record (two separators in a row?)")
    for char, name in _FORBIDDEN.items():
        if char in text:
            raise ValueError(f"{where}: contains {name} (U+{ord(char):04X}), which breaks "
                             "JSONL line splitting; remove it")
    if unicodedata.normalize("NFC", text) != text:
        # Qwen2's tokenizer normalises to NFC, so non-NFC text would not round-trip.
        raise ValueError(f"{where}: text is not in Unicode NFC form; normalise it")


def split_file(text: str, source: str) -> list[str]:
    """The records of one prose file's contents (which must end with a newline)."""
    if not text.endswith("\n"):
        raise ValueError(f"{source}: file must end with a newline")
    records = text[:-1].split(f"\n{SEPARATOR}\n")
    for i, record in enumerate(records):
        if SEPARATOR in record.split("\n"):
            raise ValueError(f"{source} record {i}: stray separator line")
        _check_text(record, f"{source} record {i}")
    return records


def read_prose(prose_dir: Path = PROSE_DIR) -> list[ProseRecord]:
    """All prose records, files in name order, records in file order."""
    files = sorted(prose_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no prose files (*.txt) in {prose_dir}")
    records = []
    for path in files:
        lang = path.stem.split("_", 1)[0]
        source = f"prose/{path.name}"
        texts = split_file(path.read_text(encoding="utf-8"), source)
        records += [ProseRecord(t, lang, source, i) for i, t in enumerate(texts)]
    return records
