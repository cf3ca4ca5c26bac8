"""The committed corpus: what the builder makes now, in the promised shape and range."""

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from tools.tiny_world import corpus, prose_records
from tools.tiny_world.corpus import read_jsonl
from tools.tiny_world.facts import load_fact_table, make_fact_table
from tools.tiny_world.paths import CORPUS_DIR

SPLITS = ("train", "validation", "test")
# Scripts the prose must contain: (name, pattern).
SCRIPTS = {
    "German/French accents": r"[äöüßÄÖÜéèêçœàù]",
    "Cyrillic": r"[\u0400-\u04ff]",
    "CJK ideographs": r"[\u4e00-\u9fff]",
    "Hiragana": r"[\u3040-\u309f]",
    "Katakana": r"[\u30a0-\u30ff]",
    "Arabic": r"[\u0600-\u06ff]",
    "Devanagari": r"[\u0900-\u097f]",
    "emoji": r"[\U0001f300-\U0001faff]",
    "tab": r"\t",
    "multiple spaces": r"[^ ] {2,}[^ ]",
    "URL": r"https?://\S+",
    "Python": r"\ndef \w+\(",
    "C": r"#include <\w+\.h>",
    "JSON": r'\{\s*"\w+":',
    "shell": r"\$ \w+",
    "date": r"\b20\d\d-\d\d-\d\d\b",
    "price": r"[€$£₽₹]\s?\d+[.,]\d\d|\d+[.,]\d\d\s?[€₽]",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prose():
    return prose_records.read_prose()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    corpus.build_corpus(out)
    return out


def test_committed_corpus_equals_a_rebuild(rebuilt):
    names = sorted(p.name for p in rebuilt.iterdir())
    assert names == ["facts.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    for name in names:
        assert _sha256(rebuilt / name) == _sha256(CORPUS_DIR / name), (
            f"data/corpus/{name} is stale: run `python -m tools.tiny_world.build`")


def test_checksum_file_lists_every_committed_file():
    listed = {}
    for line in (CORPUS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    files = {p.name for p in CORPUS_DIR.iterdir() if p.name != "SHA256SUMS"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert _sha256(CORPUS_DIR / name) == digest, name


def test_another_seed_gives_other_bytes(tmp_path):
    corpus.build_corpus(tmp_path, seed=8)
    assert _sha256(tmp_path / "train.jsonl") != _sha256(CORPUS_DIR / "train.jsonl")
    assert _sha256(tmp_path / "facts.json") != _sha256(CORPUS_DIR / "facts.json")


def test_files_are_utf8_jsonl_with_lf_endings():
    for split in SPLITS:
        raw = (CORPUS_DIR / f"{split}.jsonl").read_bytes()
        assert b"\r" not in raw
        assert raw.endswith(b"\n")
        text = raw.decode("utf-8")
        assert "\\u00e4" not in text and "ä" in text  # not ASCII-escaped
        assert len(text.splitlines()) == text.count("\n")  # no stray line breaks


def test_records_have_one_of_two_shapes():
    for split in SPLITS:
        for record in read_jsonl(CORPUS_DIR / f"{split}.jsonl"):
            if "messages" in record:
                assert set(record) == {"messages", "task", "answer", "lang", "params"}
                assert record["messages"][-1]["content"] == record["answer"]
            else:
                assert set(record) == {"text", "lang", "source"}
                assert record["source"].startswith("prose/")


def test_split_sizes_and_mixture():
    counts = {}
    for split in SPLITS:
        records = read_jsonl(CORPUS_DIR / f"{split}.jsonl")
        chat = [r for r in records if "messages" in r]
        counts[split] = (len(records) - len(chat), len(chat))
        assert len(chat) == corpus.CHAT_COUNTS[split]
        # Prose is spread through the file, not bunched at one end.
        positions = [i for i, r in enumerate(records) if "text" in r]
        assert positions[0] < len(records) / 10 and positions[-1] > len(records) * 9 / 10
    total_prose = sum(p for p, _ in counts.values())
    assert total_prose >= 250, counts
    chat_bytes = sum((CORPUS_DIR / f"{s}.jsonl").stat().st_size for s in SPLITS)
    assert chat_bytes < 4_500_000


def test_every_prose_language_is_in_every_split(prose):
    langs = {r.lang for r in prose}
    for split in SPLITS:
        records = read_jsonl(CORPUS_DIR / f"{split}.jsonl")
        assert {r["lang"] for r in records if "text" in r} == langs, split


def test_prose_is_large_enough_and_covers_the_scripts(prose):
    text = "\n".join(r.text for r in prose)
    assert len(text.encode("utf-8")) >= 60_000
    missing = [name for name, pattern in SCRIPTS.items() if not re.search(pattern, text)]
    assert not missing, f"prose lacks {missing}"


def test_prose_records_are_a_few_hundred_bytes_to_a_few_kb(prose):
    sizes = [len(r.text.encode("utf-8")) for r in prose]
    assert min(sizes) >= 100 and max(sizes) <= 8000
    assert sum(s >= 1000 for s in sizes) >= 2
    assert Counter(r.lang for r in prose)["en"] >= 30


def test_facts_file_is_the_generated_table():
    assert load_fact_table(CORPUS_DIR / "facts.json") == make_fact_table()


def test_every_city_is_asked_about_in_train():
    cities = {c.name for c in make_fact_table().cities}
    asked = {r["params"]["city"] for r in read_jsonl(CORPUS_DIR / "train.jsonl")
             if r.get("task") == "city_country"}
    assert asked == cities
