"""The tiny models shipped in data/models/: their config.json ids name the right tokens,
transformers' generate() stops at the end of a turn, and their training configs replay
(each shipped operative config parses and binds against today's configurables)."""

import json
from pathlib import Path

import gin
import pytest

from tokenkit import entry
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.training import trainer  # noqa: F401  (registers the training configurables)

MODELS = Path(__file__).resolve().parent.parent / "data" / "models"
SPECS = {
    "tiny_teacher": f"{MODELS}/tiny_teacher:source=Llama3",
    "tiny_teacher_qwen2": f"{MODELS}/tiny_teacher_qwen2:source=Qwen2",
    "tiny_teacher_to_qwen2": "data/tokenizers/qwen2_bpe:source=Qwen2:target=Llama3",
}


def test_every_shipped_model_is_covered():
    assert sorted(p.name for p in MODELS.iterdir() if p.is_dir()) == sorted(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_config_ids_name_the_family_tokens(name):
    config = json.loads((MODELS / name / "config.json").read_text())
    tokenizer = load_byteify_tokenizer(SPECS[name])
    family = tokenizer.family
    eos = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    assert sorted(tokenizer.convert_ids_to_tokens(eos)) == sorted(
        {family.first_token("eos"), family.first_token("eot")})
    bos = config["bos_token_id"]
    assert (None if bos is None else tokenizer.convert_ids_to_tokens(bos)) == family.first_token("bos")
    assert tokenizer.convert_ids_to_tokens(config["pad_token_id"]) == family.first_token("pad")


def test_the_tiny_teacher_stops_at_the_end_of_its_turn_in_transformers():
    import torch
    import transformers

    from tokenkit import prompts

    tokenizer = load_byteify_tokenizer(SPECS["tiny_teacher"])
    model = transformers.AutoModelForCausalLM.from_pretrained(MODELS / "tiny_teacher")
    record = next(json.loads(line) for line in
                  (MODELS.parent / "corpus" / "validation.jsonl").read_text().splitlines()
                  if "messages" in json.loads(line))
    prompt = prompts.preprocess_messages(record["messages"][:-1], add_generation_prompt=True)
    ids = torch.tensor([prompts.encode_prompt(prompt, tokenizer).ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert new[-1] == end_of_turn and len(new) < 64  # a reply, ended by <|eot_id|>


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_shipped_training_config_replays(name):
    operative = json.loads((MODELS / name / "training.json").read_text())["operative_config"]
    gin.clear_config()
    try:
        entry.parse_gin([], [operative], finalize=False)
        assert gin.query_parameter("train.steps") > 0
        assert gin.query_parameter("build_run.student_tokenizer")
    finally:
        gin.clear_config()
