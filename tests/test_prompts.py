"""Chat-template modes and prompt encoding against the families' real templates."""

import functools

import pytest
from transformers import AutoTokenizer

from tokenkit import families, prompts
from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer

TINY = ("llama3_bpe", "qwen2_bpe", "gemma2_sp")
MESSAGES = [
    {"role": "user", "content": "Hello, world! Wie geht's? 東京"},
    {"role": "assistant", "content": "Hello, user!\n\nAll good."},
    {"role": "user", "content": "Sure?"},
]

BOS, EOS, EOT = "<|<bos>|>", "<|<eos>|>", "<|<eot>|>"
USER_TURN = "<|<start_header>|><|<user_name>|><|<end_header>|>"
ASSISTANT_HEADER = "<|<start_header>|><|<assistant_name>|><|<end_header>|>"


@functools.cache
def _load(spec: str) -> ByteifyTokenizer:
    return load_byteify_tokenizer(spec)


@pytest.fixture(scope="module")
def specs(tiny_tokenizer_specs):
    return tiny_tokenizer_specs


# ----------------------------------------------------------------- modes


@pytest.mark.parametrize(
    "mode, prompt, expected",
    [
        ("surround_instruct", "Hi", f"{BOS}{USER_TURN}Hi{EOT}{ASSISTANT_HEADER}"),
        ("direct_encode", "Hi", f"{BOS}Hi{EOS}"),
        ("direct_encode", f"{BOS}Hi{EOT}", f"{BOS}Hi{EOT}"),
        ("direct_encode", f"{BOS}Hi{EOS}", f"{BOS}Hi{EOS}"),
        ("direct_encode_no_force_eos", "Hi", f"{BOS}Hi"),
        ("direct_encode_no_force_eos", f"{BOS}Hi", f"{BOS}Hi"),
        ("direct_encode_no_force_bos", "Hi", f"Hi{EOS}"),
        ("direct_encode_no_force_bos", f"Hi{EOT}", f"Hi{EOT}"),
        ("direct_encode_no_force_bos_no_force_eos", "Hi", "Hi"),
    ],
)
def test_preprocess_prompt_modes(mode, prompt, expected):
    assert prompts.preprocess_prompt(prompt, mode) == expected


def test_every_mode_is_covered():
    assert prompts.CHAT_TEMPLATE_MODES == (
        "surround_instruct",
        "direct_encode",
        "direct_encode_no_force_eos",
        "direct_encode_no_force_bos",
        "direct_encode_no_force_bos_no_force_eos",
    )


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown chat template mode 'direct'; valid modes: surround_instruct, direct_encode,"):
        prompts.preprocess_prompt("Hi", "direct")


def test_preprocess_messages():
    assert prompts.preprocess_messages(MESSAGES[:2]) == (
        f"{BOS}{USER_TURN}{MESSAGES[0]['content']}{EOT}"
        f"{ASSISTANT_HEADER}{MESSAGES[1]['content']}{EOT}"
    )
    system = prompts.preprocess_messages([{"role": "system", "content": "Be brief."}], add_generation_prompt=True)
    assert system == f"{BOS}<|<start_header>|><|<system_name>|><|<end_header>|>Be brief.{EOT}{ASSISTANT_HEADER}"
    assert prompts.preprocess_messages([]) == BOS


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "tool", "content": "x"}], "Message 0 has unknown role 'tool'; valid roles: system, user, assistant"),
        ([{"role": "user", "content": "x"}, {"role": "user"}], "Message 1 must be a mapping with 'role' and 'content'"),
        (["hello"], "Message 0 must be a mapping"),
    ],
)
def test_bad_messages(messages, message):
    with pytest.raises(ValueError, match=message):
        prompts.preprocess_messages(messages)


# ------------------------------------------------------------ encoding


def _chat_template_ids(path: str, messages, **kwargs) -> list[int]:
    hf = AutoTokenizer.from_pretrained(path)
    text = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    return hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_encode_prompt_matches_the_real_chat_template(specs, name, add_generation_prompt):
    tokenizer = _load(specs[name])
    prompt = prompts.preprocess_messages(MESSAGES, add_generation_prompt=add_generation_prompt)
    ids, regular = prompts.encode_prompt(prompt, tokenizer)
    expected = _chat_template_ids(
        specs[name].split(":")[0], MESSAGES, add_generation_prompt=add_generation_prompt
    )
    assert ids == expected, (tokenizer.convert_ids_to_tokens(ids), tokenizer.convert_ids_to_tokens(expected))
    assert len(regular) == len(ids)


@pytest.mark.parametrize("name", TINY)
def test_regular_token_indices(specs, name):
    tokenizer = _load(specs[name])
    encoded = prompts.encode_prompt(prompts.preprocess_messages(MESSAGES), tokenizer)
    ids, regular = encoded
    assert (encoded.ids, encoded.regular_token_indices) == (ids, regular)
    assert not encoded.truncated
    text_ids = [i for i, r in zip(ids, regular) if r != -1]
    assert [r for r in regular if r != -1] == list(range(len(text_ids)))
    expected_text_ids = [
        i for m in MESSAGES for i in tokenizer.encode(m["content"], add_special_tokens=False)
    ]
    assert text_ids == expected_text_ids
    family = tokenizer.family
    n_template = sum(
        len(family.slot(slot) or ())
        for slot in ["bos"] + ["start_header", "end_header", "eot"] * 3 + ["user_name", "assistant_name", "user_name"]
    )
    assert regular.count(-1) == n_template


def test_slots_a_family_lacks_produce_nothing(specs):
    qwen = _load(specs["qwen2_bpe"])
    assert qwen.family.slot("bos") is None
    ids, regular = prompts.encode_prompt(f"{BOS}Hi", qwen)
    assert ids == qwen.encode("Hi", add_special_tokens=False)
    assert regular == list(range(len(ids)))


def test_literal_added_tokens_in_the_text(specs):
    gemma = _load(specs["gemma2_sp"])
    ids, regular = prompts.encode_prompt(f"{BOS}Hi<start_of_turn>there<eos>", gemma)
    hi = gemma.encode("Hi", add_special_tokens=False)
    there = gemma.encode("there", add_special_tokens=False)
    start, eos, bos = (gemma.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<eos>", "<bos>"))
    assert ids == [bos, *hi, start, *there, eos]
    assert regular == [-1, *range(len(hi)), -1, *range(len(hi), len(hi) + len(there)), -1]


def test_target_family_fills_the_slots(tiny_swap_spec):
    tokenizer = _load(tiny_swap_spec("gemma2_sp", "Qwen2"))
    ids, _ = prompts.encode_prompt(prompts.preprocess_messages(MESSAGES[:1]), tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["<|im_start|>", "user", "Ċ"]  # no bos in Qwen2
    assert tokens[-2:] == ["<|im_end|>", "Ċ"]


def test_byte_converted_prompt(specs):
    tokenizer = _load(specs["gemma2_sp"] + ":conversion=byte")
    ids, regular = prompts.encode_prompt(prompts.preprocess_messages([{"role": "user", "content": "Hé"}]), tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>", "<start_of_turn>", "user", "Ċ", "H", "Ã", "©", "<end_of_turn>", "Ċ",
    ]  # fmt: skip
    assert ids[4:7] == list("Hé".encode())
    assert regular == [-1, -1, -1, -1, 0, 1, 2, -1, -1]


# ------------------------------------------------------------ truncation


@pytest.mark.parametrize("name", TINY)
def test_max_length_gives_a_prefix_and_says_so(specs, name):
    tokenizer = _load(specs[name])
    prompt = prompts.preprocess_messages(MESSAGES)
    full = prompts.encode_prompt(prompt, tokenizer)
    for max_length in range(0, len(full.ids) + 3):
        cut = prompts.encode_prompt(prompt, tokenizer, max_length=max_length)
        assert cut.ids == full.ids[:max_length]
        assert cut.regular_token_indices == full.regular_token_indices[:max_length]
        assert cut.truncated == (max_length < len(full.ids)), max_length


def test_trailing_empty_slot_is_not_truncation(specs):
    qwen = _load(specs["qwen2_bpe"])
    n = len(qwen.encode("Hi", add_special_tokens=False))
    assert not prompts.encode_prompt(f"Hi{BOS}", qwen, max_length=n).truncated
    assert prompts.encode_prompt(f"Hi{EOS}", qwen, max_length=n).truncated


def test_long_text_is_not_tokenized_beyond_the_limit(specs, monkeypatch):
    tokenizer = load_byteify_tokenizer(specs["llama3_bpe"])
    text = "word " * 5000
    seen = []
    encode = tokenizer.encode

    def recording_encode(chunk, **kwargs):
        seen.append(len(chunk))
        return encode(chunk, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", recording_encode)
    cut = prompts.encode_prompt(f"{BOS}{text}{EOS}", tokenizer, max_length=8)
    assert seen == [16 * 7]  # bos took one of the 8 tokens
    assert cut.truncated and len(cut.ids) == 8
    assert cut.ids[1:] == encode(text, add_special_tokens=False)[:7]


def test_negative_max_length_is_refused(specs):
    with pytest.raises(ValueError, match="max_length must be >= 0"):
        prompts.encode_prompt("Hi", _load(specs["qwen2_bpe"]), max_length=-1)


def test_splitter_follows_added_tokens(specs):
    tokenizer = load_byteify_tokenizer(specs["qwen2_bpe"])
    before = prompts.encode_prompt("a<new_tok>b", tokenizer)
    tokenizer.add_tokens(["<new_tok>"], special_tokens=True)
    after = prompts.encode_prompt("a<new_tok>b", tokenizer)
    new_id = tokenizer.convert_tokens_to_ids("<new_tok>")
    assert new_id not in before.ids
    assert after.ids[after.regular_token_indices.index(-1)] == new_id


def test_slot_markers_take_precedence_over_text(specs):
    tokenizer = _load(specs["llama3_bpe"])
    ids, _ = prompts.encode_prompt("<|<eot>|><|<eot|>", tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert ids[0] == eot
    assert ids[1:] == tokenizer.encode("<|<eot|>", add_special_tokens=False)
    assert families.slot_marker("eot") == "<|<eot>|>"


# ---------------------------------------------------------- token structure


@pytest.mark.parametrize("name", TINY)
def test_each_token_knows_its_message_and_part(specs, name):
    tokenizer = _load(specs[name])
    conversation = [{"role": "system", "content": "Be brief."}] + MESSAGES
    encoded = prompts.encode_prompt(prompts.preprocess_messages(conversation), tokenizer)
    assert encoded.message_roles == ["system", "user", "assistant", "user"]
    assert len(encoded.parts) == len(encoded.messages) == len(encoded.ids)
    for index, message in enumerate(conversation):
        content = [i for i, m, p in zip(encoded.ids, encoded.messages, encoded.parts)
                   if m == index and p == "content"]
        # The content tokens are exactly the tokens of the message's text.
        assert content == tokenizer.encode(message["content"], add_special_tokens=False)
        end = [i for i, m, p in zip(encoded.ids, encoded.messages, encoded.parts) if m == index and p == "end"]
        assert end == tokenizer.convert_tokens_to_ids(list(tokenizer.family.slot("eot")))
    bos = tokenizer.family.slot("bos")
    assert encoded.messages[: len(bos or ())] == [-1] * len(bos or ())
    answer = encoded.mask(roles=("assistant",), parts=("content",), message=-2)
    assert [i for i, keep in zip(encoded.ids, answer) if keep] == tokenizer.encode(
        MESSAGES[1]["content"], add_special_tokens=False)
    assert not any(encoded.mask(roles=("assistant",), parts=("content",), message=-1))
    with pytest.raises(ValueError, match="Unknown parts \\['answer'\\]"):
        encoded.mask(roles=("user",), parts=("answer",))


def test_a_plain_text_is_outside_any_message(specs):
    tokenizer = _load(specs["llama3_bpe"])
    encoded = prompts.encode_prompt(prompts.preprocess_prompt("Just text.", "direct_encode"), tokenizer)
    assert set(encoded.messages) == {-1} and encoded.message_roles == []
    assert encoded.parts[1:-1] == ["text"] * (len(encoded.ids) - 2)


def test_encode_text_adds_or_removes_bos(specs):
    llama, qwen = _load(specs["llama3_bpe"]), _load(specs["qwen2_bpe"])
    bos = llama.bos_token_id
    assert prompts.encode_text("Hi", llama, bos=True)[0] == bos
    assert prompts.encode_text(f"{BOS}Hi", llama, bos=False)[0] != bos
    assert prompts.encode_text(f"{BOS}Hi", llama, bos=True).count(bos) == 1
    assert prompts.encode_text("Hi", qwen, bos=True) == qwen.encode("Hi", add_special_tokens=False)
