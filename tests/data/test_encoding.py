from pathlib import Path

import pytest

from tokenkit import prompts
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.data.encoding import SideEncoder

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"

CHAT = {"messages": [{"role": "user", "content": "What is 7 + 5?"},
                     {"role": "assistant", "content": "12"}]}


@pytest.fixture(scope="module", params=["llama3_bpe:source=Llama3", "gemma2_sp:source=Gemma2",
                                        "qwen2_bpe:source=Qwen2"])
def tokenizer(request):
    return load_byteify_tokenizer(str(DATA_DIR / "tokenizers" / request.param))


def test_messages_encode_like_the_whole_prompt(tokenizer):
    encoder = SideEncoder(tokenizer, max_length=64)
    expected = prompts.encode_prompt(prompts.preprocess_messages(CHAT["messages"]), tokenizer).ids
    out = encoder(CHAT)
    n = int(out.attention_mask.sum())
    assert out.input_ids[:n].tolist() == list(expected)
    assert (out.input_ids[n:] == encoder.pad_id).all()
    assert out.loss_mask[:n].all() and not out.truncated


def test_assistant_loss_mask_covers_the_answer_only(tokenizer):
    encoder = SideEncoder(tokenizer, max_length=64, loss_mask_mode="assistant")
    out = encoder(CHAT)
    masked_ids = out.input_ids[out.loss_mask].tolist()
    answer = prompts.encode_prompt("12" + "<|<eot>|>", tokenizer).ids
    assert masked_ids == list(answer)


def test_text_with_direct_encode_adds_bos_and_eos(tokenizer):
    encoder = SideEncoder(tokenizer, max_length=32)
    out = encoder({"text": "Grüße aus Köln"})
    n = int(out.attention_mask.sum())
    expected = prompts.encode_prompt(prompts.preprocess_prompt("Grüße aus Köln", "direct_encode"), tokenizer).ids
    assert out.input_ids[:n].tolist() == list(expected)


def test_truncation_is_flagged(tokenizer):
    encoder = SideEncoder(tokenizer, max_length=8)
    out = encoder({"text": "word " * 50})
    assert out.truncated and out.attention_mask.all()


def test_without_chat_template_uses_the_tokenizer(tokenizer):
    encoder = SideEncoder(tokenizer, max_length=16, use_chat_template=False)
    out = encoder({"text": "abc"})
    n = int(out.attention_mask.sum())
    assert out.input_ids[:n].tolist() == tokenizer.encode("abc", add_special_tokens=True)
    with pytest.raises(ValueError, match="use_chat_template is False"):
        encoder({"messages": CHAT["messages"]})


def test_bad_options_name_valid_ones(tokenizer):
    with pytest.raises(ValueError, match="valid: \\[None, 'assistant'"):
        SideEncoder(tokenizer, max_length=8, loss_mask_mode="answers")
    with pytest.raises(ValueError, match="surround_instruct"):
        SideEncoder(tokenizer, max_length=8, chat_template_mode="chatty")


def test_dolly_marker_masks_the_prompt():
    tok = load_byteify_tokenizer(str(DATA_DIR / "tokenizers" / "llama3_bpe:source=Llama3"))
    encoder = SideEncoder(tok, max_length=64, loss_mask_mode="dolly", use_chat_template=False)
    out = encoder({"text": "Instruction: say hi\n### Response:\nhi there"})
    masked = tok.decode(out.input_ids[out.loss_mask].tolist())
    assert masked == "hi there"


def test_pair_encoder_aligns_teacher_and_student():
    from tokenkit.align import Aligner
    from tokenkit.data.encoding import PairEncoder

    teacher = load_byteify_tokenizer(str(DATA_DIR / "tokenizers" / "llama3_bpe:source=Llama3"))
    student = load_byteify_tokenizer(str(DATA_DIR / "tokenizers" / "gemma2_sp:source=Gemma2"))
    encoder = PairEncoder(SideEncoder(teacher, 48), SideEncoder(student, 64), Aligner(teacher, student))
    out = encoder(CHAT)
    assert out.teacher.input_ids.shape == (48,) and out.student.input_ids.shape == (64,)
    for kind in ("unconstrained", "space"):
        t, s = out.chunks[kind].teacher, out.chunks[kind].student
        assert t.max() == s.max() >= 3  # same chunks on both sides
    # Text chunks spell the same text on both sides (template runs such as `assistant`
    # vs `model` are aligned slot to slot, each spelt its own way).
    t, s = out.chunks["unconstrained"].teacher, out.chunks["unconstrained"].student
    same = []
    for chunk in range(t.max() + 1):
        t_text = "".join(teacher.convert_ids_to_tokens(out.teacher.input_ids[t == chunk].tolist()))
        s_text = "".join(student.convert_ids_to_tokens(out.student.input_ids[s == chunk].tolist()))
        if t_text == s_text:
            same.append(t_text)
    joined = "".join(same)
    assert "WhatĠisĠ7Ġ+Ġ5?" in joined and "12" in joined
    assert out.chunks["space"].teacher.max() <= out.chunks["unconstrained"].teacher.max()


def test_stream_encoder_is_the_unpadded_encoding(tokenizer):
    from tokenkit.data.encoding import StreamEncoder

    side = SideEncoder(tokenizer, max_length=64, loss_mask_mode="assistant")
    out = StreamEncoder(side)(CHAT)
    padded = side(CHAT)
    n = int(padded.attention_mask.sum())
    assert out["input_ids"].tolist() == padded.input_ids[:n].tolist()
    assert out["loss_mask"].tolist() == padded.loss_mask[:n].tolist()


def test_assistant_mask_trains_plain_texts_whole(tokenizer):
    """Prose mixed into chat data: a `text` record has no roles, so every token trains."""
    encoder = SideEncoder(tokenizer, max_length=32, loss_mask_mode="assistant")
    out = encoder({"text": "Plain prose."})
    n = int(out.attention_mask.sum())
    assert n > 2 and out.loss_mask[:n].all() and not out.loss_mask[n:].any()
