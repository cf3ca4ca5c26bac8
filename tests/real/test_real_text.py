"""data/real/ (real text made by tools/real_text.py) and the tool's cleaning rules.

The committed files are checked as they are (checksums, splits, provenance); they are
remade here only where this machine has the Python release that made them.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter, defaultdict

import pytest

from tests.conftest import DATA_DIR
from tools import real_text as rt

REAL = DATA_DIR / "real"
FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "pydoc_eval.txt", "SOURCES.json",
         "train_en_passages.jsonl", "validation_en_passages.jsonl", "test_en_passages.jsonl")


def _records(split: str) -> list[dict]:
    return [json.loads(line) for line in (REAL / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def sources() -> dict:
    return json.loads((REAL / "SOURCES.json").read_text(encoding="utf-8"))


def test_checksums_and_size():
    listed = {}
    for line in (REAL / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    assert sorted(listed) == sorted(FILES)
    for name, digest in listed.items():
        assert hashlib.sha256((REAL / name).read_bytes()).hexdigest() == digest, name
    total = sum(p.stat().st_size for p in REAL.iterdir() if p.is_file())
    assert total < 4_000_000, f"data/real is {total} bytes"


def test_splits_are_disjoint_by_document(sources):
    documents = defaultdict(set)
    for split in rt.SPLITS:
        for record in _records(split):
            assert set(record) == {"text", "source", "lang"}
            documents[record["source"]].add(split)
            assert rt.split_of(record["source"]) == split
    assert all(len(splits) == 1 for splits in documents.values())
    assert len(documents) == len(sources["documents"])


def test_provenance_lists_every_source(sources):
    by_id = {d["id"]: d for d in sources["documents"]}
    assert len(by_id) == len(sources["documents"])
    counts = Counter()
    for split in rt.SPLITS:
        for record in _records(split):
            doc = by_id[record["source"]]
            assert (doc["lang"], doc["split"]) == (record["lang"], split)
            counts[record["source"]] += 1
    for doc in sources["documents"]:
        assert counts[doc["id"]] == doc["paragraphs"] > 0
        assert doc["license"] and doc["package"] and doc["version"] and doc["path"]
        if doc["kind"] == "man":
            assert doc["path"].startswith(f"/usr/share/man/{doc['lang']}/") and doc["package"] != "unknown"
        else:
            assert doc["kind"] == "pydoc" and doc["lang"] == "en" and doc["license"].startswith("PSF-2.0")
    assert {d["module"] for d in sources["documents"] if d["kind"] == "pydoc"} <= set(rt.PYDOC_MODULES)
    assert sources["python"] and sources["system"]


def test_languages_and_sizes():
    size = defaultdict(int)
    for split in rt.SPLITS:
        for record in _records(split):
            size[record["lang"], split] += len(record["text"].encode())
            assert rt.MIN_CHARS <= len(record["text"]) <= rt.MAX_CHARS
            assert len(record["text"].splitlines()) == 1
    languages = {lang for lang, _ in size}
    assert "en" in languages and len(languages - {"en"}) >= 6
    assert 200_000 <= size["en", "train"] <= 600_000  # a few hundred KB of English prose
    assert size["en", "validation"] > 20_000 and size["en", "test"] > 20_000
    assert all(size[lang, "train"] > 10_000 for lang in languages)


def test_paragraphs_are_unique():
    texts = [r["text"] for split in rt.SPLITS for r in _records(split)]
    assert len(texts) == len(set(texts))


def test_pydoc_eval(sources):
    lines = (REAL / "pydoc_eval.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 12
    test_english = {r["text"] for r in _records("test") if r["lang"] == "en"}
    for line in lines[:-1]:
        assert 300 <= len(line) <= 3000 and line in test_english


def test_pydoc_remakes_the_committed_text(sources):
    if platform.python_version() != sources["python"]:
        pytest.skip(f"made with Python {sources['python']}; this is {platform.python_version()}")
    first = rt.PYDOC_MODULES[0]  # nothing precedes it, so deduplication removed nothing
    (doc,) = rt.collect_pydoc([first])
    committed = [r["text"] for r in _records(rt.split_of(doc.id)) if r["source"] == doc.id]
    assert doc.paragraphs == committed and committed


# ------------------------------------------------------------------- cleaning rules


def test_reflow():
    assert rt.reflow(["  Joins wrapped", "   lines  into one. "]) == "Joins wrapped lines into one."
    assert rt.reflow(["ユーザのログイ", "ンシェル"]) == "ユーザのログインシェル"
    assert rt.reflow(["compare with apt-", "transport-http(1)"]) == "compare with apt-transport-http(1)"
    assert rt.reflow(["e\u0301t\u00e9"]) == "\u00e9t\u00e9"  # NFC


def test_reads_as_prose():
    prose = "This sentence is long enough and reads like ordinary prose written by a person."
    assert rt.reads_as_prose(prose)
    assert not rt.reads_as_prose("Too short to keep.")
    assert not rt.reads_as_prose("x = compute(a[0], b[1]) | other(c) == {d: e} for the value of it")
    assert not rt.reads_as_prose(">>> print('hello world') and a few more words to be long enough here")
    assert not rt.reads_as_prose(prose + "\u2028" + prose)
    assert rt.reads_as_prose(
        "ログインシェルは、コマンド名が記載されていればなんでも良い。スーパーユーザの場合はこの制限はなく、いかなる値でも指定できる。"
    )


PYDOC_PAGE = """Python Library Documentation: module demo

NAME
    demo - A demo module.

DESCRIPTION
    The module docstring is ordinary prose, long enough to keep, and spread over
    two lines of the rendered page.

    >>> demo.run(1)
    2

CLASSES
    class Runner(builtins.object)
     |  Runner(count)
     |
     |  Runs things a number of times and remembers how often it has been asked to
     |  do so, which is what the tests check here.
     |
     |  Methods defined here:
     |
     |  run(self, n)
     |      Runs the thing n times and returns the number of runs made so far, as
     |      an integer that only grows.
     |
     |      Options:
     |          fast -- run quickly and carelessly through every one of the items
     |
     |  ----------------------------------------------------------------------
     |  Data descriptors defined here:
     |
     |  __dict__
     |      dictionary for instance variables

DATA
    LIMIT = 10

FILE
    /usr/lib/python3/demo.py
"""


def test_pydoc_paragraphs():
    assert rt.pydoc_paragraphs(PYDOC_PAGE) == [
        "The module docstring is ordinary prose, long enough to keep, and spread over two lines of the rendered page.",
        "Runs things a number of times and remembers how often it has been asked to do so, which is what the tests check here.",
        "Runs the thing n times and returns the number of runs made so far, as an integer that only grows.",
    ]


MAN_PAGE = """DEMO(1)                      User Commands                     DEMO(1)

NAME
       demo - zeigt, wie Handbuchseiten in Absätze zerlegt werden

BESCHREIBUNG
       Dieses Programm liest die angegebenen Dateien und schreibt sie nach der
       Bearbeitung wieder auf die Standardausgabe, ohne etwas zu verändern.
           demo --alles --und --noch --mehr datei.txt > ausgabe.txt 2>&1

       $ demo --alles datei.txt und noch viele weitere Wörter, damit es lang genug ist

   Optionen
       -a, --alles
              Bearbeitet alle Dateien, auch die versteckten, deren Name mit
              einem Punkt beginnt, und meldet jede Datei einzeln.

       -q     Schreibt keine Meldungen, auch dann nicht, wenn eine Datei nicht
              gelesen werden kann oder leer ist.

demo 1.0                          2024-01-01                        DEMO(1)
"""


def test_man_paragraphs():
    assert rt.man_paragraphs(MAN_PAGE) == [
        "Dieses Programm liest die angegebenen Dateien und schreibt sie nach der Bearbeitung wieder auf die Standardausgabe, ohne etwas zu verändern.",
        "Bearbeitet alle Dateien, auch die versteckten, deren Name mit einem Punkt beginnt, und meldet jede Datei einzeln.",
        "Schreibt keine Meldungen, auch dann nicht, wenn eine Datei nicht gelesen werden kann oder leer ist.",
    ]


def test_untranslated_paragraphs_are_recognised():
    english = "Set the number of days of inactivity after a password has expired before the account is locked."
    assert not rt.in_language(english, "de") and not rt.in_language(english, "ru")
    assert rt.in_language("Setzt das Datum, ab dem auf das Benutzerkonto nicht mehr zugegriffen werden kann.", "de")
    assert rt.in_language("Установить дату устаревания учётной записи пользователя.", "ru")
    assert rt.in_language(english, "en")


def test_split_and_dedup():
    assert rt.split_of("pydoc/json") == rt.split_of("pydoc/json")
    share = Counter(rt.split_of(f"doc/{i}") for i in range(2000))
    assert 0.65 < share["train"] / 2000 < 0.75 and 0.11 < share["test"] / 2000 < 0.19
    docs = [rt.Document("a", "en", ["p1", "p2"], {}), rt.Document("b", "en", ["p2", "p3"], {})]
    assert rt.deduplicate(docs) == 1
    assert [d.paragraphs for d in docs] == [["p1", "p2"], ["p3"]]


def test_passages_join_paragraphs_of_one_document_in_order():
    for split in rt.SPLITS:
        paragraphs = [r for r in _records(split) if r["lang"] == "en"]
        with open(REAL / f"{split}_en_passages.jsonl", encoding="utf-8") as f:
            joined = [json.loads(line) for line in f]
        assert rt.passages(paragraphs) == joined
        assert "\n\n".join(p["text"] for p in paragraphs) == "\n\n".join(p["text"] for p in joined)
        assert all(len(p["text"]) <= rt.PASSAGE_CHARS or "\n\n" not in p["text"] for p in joined)
