"""The three committed tokenizers: load, round-trip, family templates, exactness."""

import hashlib
import json

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tokenkit.constants import bytes_to_chars
from tools.tiny_world import bpe, unigram
from tools.tiny_world.paths import CORPUS_DIR, TOKENIZERS_DIR
from tools.tiny_world.tokenizer_specs import SPECS

TOKENIZER_NAMES = tuple(SPECS)

TWO_TURNS = [{"role": "user", "content": "Hi there!"},
             {"role": "assistant", "content": "Hello. How can I help?"}]
RENDERED = {
    "llama3_bpe": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!"
                  "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                  "Hello. How can I help?<|eot_id|>",
    "qwen2_bpe": "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
                 "Hello. How can I help?<|im_end|>\n",
    "gemma2_sp": "<bos><start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\n"
                 "Hello. How can I help?<end_of_turn>\n",
}
GENERATION_PROMPT = {
    "llama3_bpe": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2_bpe": "<|im_start|>assistant\n",
    "gemma2_sp": "<start_of_turn>model\n",
}
# Tokens of the rendered conversation, in byte-level spelling for regular tokens.
TOKENS_AROUND_CONTENT = {
    "llama3_bpe": (["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>",
                    "ĊĊ"],
                   ["<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>",
                    "ĊĊ"]),
    "qwen2_bpe": (["<|im_start|>", "user", "Ċ"],
                  ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]),
    "gemma2_sp": (["<bos>", "<start_of_turn>", "user", "Ċ"],
                  ["<end_of_turn>", "Ċ", "<start_of_turn>", "model", "Ċ"]),
}
SPECIAL_IDS = {  # name -> expected (bos id or None, eos token, pad token)
    "llama3_bpe": ("<|begin_of_text|>", "<|eot_id|>", None),
    "qwen2_bpe": (None, "<|im_end|>", "<|endoftext|>"),
    "gemma2_sp": ("<bos>", "<eos>", "<pad>"),
}


def _spelled(tokenizer, name, ids):
    """Token strings, regular ones in GPT-2 byte-level spelling (independent of checks.py)."""
    out = []
    for token in tokenizer.convert_ids_to_tokens(ids):
        if name != "gemma2_sp" or token in SPECS[name].special_tokens:
            out.append(token)
        elif token.startswith("<0x") and token.endswith(">"):
            out.append(bytes_to_chars(bytes([int(token[3:-1], 16)])))
        else:
            out.append(bytes_to_chars(token.replace("▁", " ").encode("utf-8")))
    return out


def test_loads_as_a_fast_tokenizer_of_the_promised_size(hf_tokenizer, tokenizer_name):
    assert hf_tokenizer.is_fast
    assert len(hf_tokenizer) == SPECS[tokenizer_name].vocab_size


def test_special_token_roles(hf_tokenizer, tokenizer_name):
    bos, eos, pad = SPECIAL_IDS[tokenizer_name]
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.pad_token) == (
        bos, eos, pad)
    assert set(SPECS[tokenizer_name].special_tokens) <= set(hf_tokenizer.all_special_tokens)


def test_special_tokens_tokenize_whole(hf_tokenizer, tokenizer_name):
    for token in SPECS[tokenizer_name].special_tokens:
        ids = hf_tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert hf_tokenizer.convert_tokens_to_ids(token) in ids, token
        assert hf_tokenizer.encode(token, add_special_tokens=False) == [
            hf_tokenizer.convert_tokens_to_ids(token)]


def test_bos_is_prepended_like_the_family(hf_tokenizer, tokenizer_name):
    ids = hf_tokenizer("Hello world")["input_ids"]
    bos = SPECIAL_IDS[tokenizer_name][0]
    if bos is None:
        assert ids == hf_tokenizer.encode("Hello world", add_special_tokens=False)
    else:
        assert ids[0] == hf_tokenizer.convert_tokens_to_ids(bos)
        assert ids[1:] == hf_tokenizer.encode("Hello world", add_special_tokens=False)


def test_validation_split_round_trips(hf_tokenizer, validation_texts):
    assert len(validation_texts) > 2000
    bad = [t for t in validation_texts
           if hf_tokenizer.decode(hf_tokenizer.encode(t, add_special_tokens=False)) != t]
    assert not bad, f"{len(bad)} texts do not round-trip, e.g. {bad[0][:100]!r}"


def test_no_unknown_tokens_on_validation(hf_tokenizer, validation_texts):
    unk = hf_tokenizer.unk_token_id
    if unk is None:  # byte-level BPE has no unknown token at all
        assert hf_tokenizer.unk_token is None
        return
    for text in validation_texts:
        assert unk not in hf_tokenizer.encode(text, add_special_tokens=False)


def test_template_tokens_exist_in_byte_level_spelling(hf_tokenizer, tokenizer_name):
    spelled = set(_spelled(hf_tokenizer, tokenizer_name, list(range(len(hf_tokenizer)))))
    needed = {"llama3_bpe": {"ĊĊ", "system", "user", "assistant"},
              "qwen2_bpe": {"Ċ", "system", "user", "assistant"},
              "gemma2_sp": {"Ċ", "user", "model"}}[tokenizer_name]
    assert needed <= spelled, needed - spelled
    if tokenizer_name == "gemma2_sp":  # a plain "\n" piece, not only the byte <0x0A>
        assert "\n" in hf_tokenizer.get_vocab() and "<0x0A>" in hf_tokenizer.get_vocab()
        assert hf_tokenizer.encode("\n", add_special_tokens=False) == [
            hf_tokenizer.convert_tokens_to_ids("\n")]


def test_chat_template_renders_the_family_format(hf_tokenizer, tokenizer_name):
    text = hf_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert text == RENDERED[tokenizer_name]
    prompt = hf_tokenizer.apply_chat_template(TWO_TURNS[:1], tokenize=False,
                                              add_generation_prompt=True)
    assert prompt.endswith(GENERATION_PROMPT[tokenizer_name])


def test_chat_template_tokenizes_like_the_family(hf_tokenizer, tokenizer_name):
    ids = hf_tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    tokens = _spelled(hf_tokenizer, tokenizer_name, ids)
    head, middle = TOKENS_AROUND_CONTENT[tokenizer_name]
    assert tokens[:len(head)] == head
    joined = "\x00".join(tokens)
    assert "\x00".join(middle) in joined
    assert hf_tokenizer.decode(ids) == RENDERED[tokenizer_name]


def test_system_messages_and_trimming(hf_tokenizer, tokenizer_name):
    padded = [{"role": "user", "content": "  spaced out \n"}]
    text = hf_tokenizer.apply_chat_template(padded, tokenize=False)
    if tokenizer_name == "qwen2_bpe":
        assert "\n  spaced out \n<|im_end|>" in text  # Qwen2 keeps content as is
    else:
        assert "\nspaced out<" in text  # Llama 3 and Gemma strip it
    system = [{"role": "system", "content": "Be brief."}] + TWO_TURNS
    if tokenizer_name == "gemma2_sp":
        with pytest.raises(Exception, match="system role"):
            hf_tokenizer.apply_chat_template(system, tokenize=False)
    else:
        text = hf_tokenizer.apply_chat_template(system, tokenize=False)
        assert "system" in text and "Be brief." in text


def test_digits_split_like_the_family(hf_tokenizer, tokenizer_name):
    tokens = _spelled(hf_tokenizer, tokenizer_name,
                      hf_tokenizer.encode("1234567", add_special_tokens=False))
    if tokenizer_name == "llama3_bpe":  # runs of up to three digits
        assert "".join(tokens) == "1234567" and max(len(t) for t in tokens) <= 3
        assert tokens != list("1234567")
    else:  # Qwen2 and Gemma split every digit
        assert tokens == list("1234567")


def test_fast_gemma_matches_sentencepiece_on_validation(validation_texts):
    from transformers import AutoTokenizer

    directory = TOKENIZERS_DIR / "gemma2_sp"
    processor = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    fast = AutoTokenizer.from_pretrained(str(directory))
    assert processor.vocab_size() == len(fast)
    for i in range(processor.vocab_size()):
        assert fast.convert_ids_to_tokens(i) == processor.id_to_piece(i)
    for text in validation_texts:
        assert fast.encode(text, add_special_tokens=False) == processor.encode(text), text


def test_sentencepiece_model_is_gemma_like():
    processor = spm.SentencePieceProcessor(
        model_file=str(TOKENIZERS_DIR / "gemma2_sp" / "tokenizer.model"))
    assert [processor.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    # Identity normalisation: no NFKC folding of full-width forms or ligatures.
    for text in ("ｆｕｌｌ", "ﬁne", "①"):
        assert processor.decode(processor.encode(text)) == text
    assert processor.encode("<0x41>", out_type=str)[0] != "<0x41>"


def test_tokenizers_disagree():
    from transformers import AutoTokenizer

    text = "Die Straßenbahn kommt um 12:45 Uhr. 東京まで ¥14,000 😀"
    pieces = {}
    for name in TOKENIZER_NAMES:
        tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / name))
        pieces[name] = tuple(_spelled(tokenizer, name,
                                      tokenizer.encode(text, add_special_tokens=False)))
        assert "".join(pieces[name]) == bytes_to_chars(text.encode("utf-8"))
    assert len(set(pieces.values())) == 3


def test_force_tokens_appends_merges_that_yield_the_token():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=270, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["banana bandana"] * 20, trainer=trainer)
    assert "system" not in tokenizer.get_vocab()
    before = tokenizer.encode("banana bandana").tokens
    forced, added = bpe.force_tokens(tokenizer, ["system", "ĊĊ"])
    assert "system" in added and "ĊĊ" in added
    assert forced.encode("system").tokens == ["system"]
    assert forced.encode("\n\n").tokens == ["ĊĊ"]
    assert forced.encode("banana bandana").tokens == before
    again, added_again = bpe.force_tokens(forced, ["system"])
    assert added_again == [] and again.to_str() == forced.to_str()


def test_force_pieces_adds_a_winning_piece():
    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen jugs",
             "modest models make merry music", "an assist is not a stance",
             "sphinx of black quartz, judge my vow"] * 20
    spec = SPECS["gemma2_sp"]
    model = unigram.train_unigram(spec, texts, seed=0, vocab_size=320)
    assert "assistant" not in {spm.SentencePieceProcessor(model_proto=model).id_to_piece(i)
                               for i in range(320)}
    forced, added = unigram.force_pieces(model, ["assistant"])
    processor = spm.SentencePieceProcessor(model_proto=forced)
    assert added == ["assistant"] and processor.vocab_size() == 321
    assert processor.encode("assistant", out_type=str) == ["assistant"]
    fast = unigram.to_fast(forced, spec)
    for text in texts + ["assistant", "an assistant of the dog\n<0x41>"]:
        assert fast.encode(text, add_special_tokens=False).ids == processor.encode(text)


def test_checksum_file_matches_committed_tokenizers():
    lines = (TOKENIZERS_DIR / "SHA256SUMS").read_text().splitlines()
    listed = dict(reversed(line.split("  ")) for line in lines)
    files = sorted(str(p.relative_to(TOKENIZERS_DIR)) for p in TOKENIZERS_DIR.glob("*/*"))
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((TOKENIZERS_DIR / name).read_bytes()).hexdigest() == digest


def test_config_records_the_chat_template():
    for name in TOKENIZER_NAMES:
        config = json.loads((TOKENIZERS_DIR / name / "tokenizer_config.json").read_text())
        assert config["chat_template"] == SPECS[name].chat_template
        assert config["clean_up_tokenization_spaces"] is False


@pytest.mark.slow
def test_rebuilding_the_tokenizers_gives_identical_files(tmp_path):
    from tools.tiny_world import build

    (tmp_path / "corpus").mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (tmp_path / "corpus" / name).write_bytes((CORPUS_DIR / name).read_bytes())
    build.build(tmp_path, what="tokenizers")
    for path in sorted(TOKENIZERS_DIR.rglob("*")):
        if path.is_file():
            rebuilt = tmp_path / "tokenizers" / path.relative_to(TOKENIZERS_DIR)
            assert rebuilt.read_bytes() == path.read_bytes(), path
