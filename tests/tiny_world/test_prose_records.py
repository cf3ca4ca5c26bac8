"""Splitting hand-written prose into records, and mixing records into splits."""

import pytest

from tools.tiny_world import corpus, prose_records


def test_split_file_keeps_text_byte_for_byte():
    text = "first\trecord  with   spaces\n\nand a blank line\n%%\nsecond ✓\n%%\n  third\n"
    assert prose_records.split_file(text, "x.txt") == [
        "first\trecord  with   spaces\n\nand a blank line", "second ✓", "  third"]


def test_separator_must_be_a_whole_line():
    text = "uses %% inside a line\n%%\nprintf(\"%%d\")\n"
    assert prose_records.split_file(text, "x.txt") == [
        "uses %% inside a line", 'printf("%%d")']


@pytest.mark.parametrize("text, message", [
    ("a\n%%\n\n%%\nb\n", "empty record"),
    ("a\n%%\n%%\nb\n", "stray separator"),
    ("no final newline", "end with a newline"),
    ("a\r\nb\n", "CR"),
    ("a\u2028b\n", "LINE SEPARATOR"),
    ("Cafe\u0301\n", "NFC"),
    ("%%\na\n", "stray separator"),
])
def test_bad_prose_is_rejected_with_the_place_named(text, message):
    with pytest.raises(ValueError, match=message) as info:
        prose_records.split_file(text, "bad.txt")
    assert "bad.txt" in str(info.value)


def test_split_assignment_puts_every_tenth_record_in_validation_and_test():
    splits = [prose_records.split_of(i) for i in range(20)]
    assert [i for i, s in enumerate(splits) if s == "validation"] == [3, 13]
    assert [i for i, s in enumerate(splits) if s == "test"] == [7, 17]
    assert splits.count("train") == 16


def test_read_prose_names_language_and_source(tmp_path):
    (tmp_path / "de_test.txt").write_text("Grüße\n%%\nTschüß\n", encoding="utf-8")
    (tmp_path / "en_a.txt").write_text("Hello\n", encoding="utf-8")
    records = prose_records.read_prose(tmp_path)
    assert [(r.lang, r.source, r.index, r.text) for r in records] == [
        ("de", "prose/de_test.txt", 0, "Grüße"), ("de", "prose/de_test.txt", 1, "Tschüß"),
        ("en", "prose/en_a.txt", 0, "Hello")]


def test_read_prose_needs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prose files"):
        prose_records.read_prose(tmp_path)


def test_interleave_spreads_the_short_list_evenly():
    merged = corpus.interleave(["P0", "P1"], list(range(8)))
    assert merged == [0, 1, "P0", 2, 3, 4, 5, "P1", 6, 7]
    assert corpus.interleave([], [1, 2]) == [1, 2]
    assert corpus.interleave(["a"], []) == ["a"]


def test_training_texts_cap_counts_chat_records():
    records = [{"text": "prose one"},
               {"messages": [{"role": "user", "content": "q1"},
                             {"role": "assistant", "content": "a1"}]},
               {"messages": [{"role": "user", "content": "q2"},
                             {"role": "assistant", "content": "a2"}]},
               {"text": "prose two"}]
    assert corpus.training_texts(records, 1) == ["prose one", "q1", "a1", "prose two"]
    assert corpus.training_texts(records) == [
        "prose one", "q1", "a1", "q2", "a2", "prose two"]
