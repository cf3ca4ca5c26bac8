"""The build's checks catch what they are meant to catch."""

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tools.tiny_world import checks
from tools.tiny_world.paths import TOKENIZERS_DIR
from tools.tiny_world.tokenizer_specs import SPECS, QWEN2_CHAT_TEMPLATE

GEMMA = SPECS["gemma2_sp"]
LLAMA = SPECS["llama3_bpe"]


@pytest.mark.parametrize("piece, spelling", [
    ("▁hello", "Ġhello"), ("<0x0A>", "Ċ"), ("\n", "Ċ"), ("<0x20>", "Ġ"), ("é", "Ã©"),
    ("▁▁", "ĠĠ"), ("<0xZZ>", "<0xZZ>")])
def test_byte_spelling_of_sentencepiece_pieces(piece, spelling):
    assert checks.byte_spelling(piece, GEMMA) == spelling


def test_byte_spelling_leaves_byte_level_tokens_alone():
    assert checks.byte_spelling("ĠĊĊ", LLAMA) == "ĠĊĊ"


def test_byte_vocab_prefers_normal_pieces_over_byte_pieces():
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "gemma2_sp"))
    vocab = checks.byte_vocab(tokenizer, GEMMA)
    assert vocab["Ċ"] == tokenizer.convert_tokens_to_ids("\n")
    assert "<bos>" not in vocab


def _lossy_tokenizer():
    """A byte-level BPE behind an NFKC normaliser: "ﬁ" comes back as "fi"."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["fine fish"] * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_round_trip_failures_are_reported():
    failures = checks.round_trip_failures(_lossy_tokenizer(), ["fine", "ﬁne", "①"], "t")
    assert failures == ["ﬁne", "①"]


def test_missing_template_tokens_are_reported():
    tokenizer = _lossy_tokenizer()
    assert checks.missing_template_tokens(tokenizer, LLAMA) == [
        "ĊĊ", "system", "user", "assistant"]


def test_template_runs_are_checked_against_the_family():
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "llama3_bpe"))
    assert checks.template_runs_missing(tokenizer, LLAMA) == []
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE  # the wrong family's format
    assert len(checks.template_runs_missing(tokenizer, LLAMA)) == 2


def test_sentencepiece_mismatches_are_reported():
    directory = TOKENIZERS_DIR / "gemma2_sp"
    model = (directory / "tokenizer.model").read_bytes()
    fast = AutoTokenizer.from_pretrained(str(directory))
    assert checks.sentencepiece_mismatches(model, fast, ["hello world"], "t") == []
    llama = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "llama3_bpe"))
    (text, expected, got), = checks.sentencepiece_mismatches(model, llama, ["hello"], "t")
    assert text == "hello" and expected != got


def test_spec_lookup_names_the_valid_tokenizers():
    from tools.tiny_world.tokenizer_specs import get_spec

    assert get_spec("qwen2_bpe").family == "Qwen2"
    with pytest.raises(ValueError, match="llama3_bpe, qwen2_bpe, gemma2_sp"):
        get_spec("gpt2")


def test_fit_to_size_retrains_with_fewer_entries():
    from tools.tiny_world.tokenizer_specs import fit_to_size

    calls = []

    def train(size):  # forcing always adds 3 entries
        calls.append(size)
        return f"model{size}", size + 3

    assert fit_to_size(100, train, "t") == "model97"
    assert calls == [100, 97]
