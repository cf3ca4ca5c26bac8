"""The HF export of a run's student (`training.export`) and of any checkpoint
(`python -m tokenkit.export`): LoRA merged, vocabulary trimmed, special-token ids, and
byte-level students with their input-id expansion, loaded by plain transformers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from tokenkit import entry
from tokenkit.evaluation.model import load_eval_model
from tokenkit.models import hf_expansion, init_params, make_mesh, make_transformer, save_pretrained
from tokenkit.training import export, setup, trainer
from tokenkit.training.setup import random_init_config

REPO = Path(__file__).resolve().parents[2]
LLAMA3 = f"{REPO}/data/tokenizers/llama3_bpe:source=Llama3"
GEMMA2 = f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2"
BYTES = f"{LLAMA3}:conversion=byte"
VALIDATION = str(REPO / "data" / "corpus" / "validation.jsonl")
TEXTS = ["Hello world, the tiny world speaks.", "Ünïcödé bytes: 3 + 4 = 7\n\nnew paragraph"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with the llama3_bpe vocabulary, in the HF format."""
    config = random_init_config(
        vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    out = tmp_path_factory.mktemp("tiny_model")
    save_pretrained(out, config, init_params(make_transformer(config), 0))
    return str(out)


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _byte_run(tiny_model):
    """A byte-level student with input-id expansion and untied, padded embeddings, as a
    training run sets it up (its parameters randomised, so the expansion matters)."""
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    run = setup.build_run(
        mesh, ["sft"], 0, student_model=tiny_model, student_tokenizer=LLAMA3,
        target_tokenizer=BYTES, expand_input_ids=True, output_embeddings_mode="untie",
        dtype="float32",
    )
    rng = np.random.default_rng(0)
    # Untrained rows are copies of one another; random ones make every id count.
    trainable = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype), run.trainable)
    frozen = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype)
                          if x.ndim == 2 else x, run.frozen)
    return run, trainable, frozen


def _batch(tokenizer):
    """Texts with bos and an end of turn (special tokens), right-padded."""
    rows = [tokenizer.encode(t, add_special_tokens=True) + [tokenizer.convert_tokens_to_ids(
        tokenizer.family.first_token("eot"))] for t in TEXTS]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


@pytest.mark.slow
def test_byte_student_exports_with_its_expansion_for_transformers(tiny_model, tmp_path):
    import torch
    import transformers

    run, trainable, frozen = _byte_run(tiny_model)
    out = export.export_student(run, trainable, frozen, tmp_path / "export")
    tokenizer = run.student.tokenizer
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "tokenkit_expanded" and config["tokenkit_base_model_type"] == "llama"
    assert config["vocab_size"] == len(tokenizer) < run.student.config.vocab_size  # padding trimmed
    assert config["tie_word_embeddings"] is False
    assert (out / hf_expansion.MODELING_FILE).is_file()

    ids, mask = _batch(tokenizer)
    params = export.student_params(run, trainable, frozen)
    ours = np.asarray(run.student.forward(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                                          expansion=run.student.expansion).logits)[..., :len(tokenizer)]

    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForCausalLM.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    with torch.no_grad():
        theirs = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=0)
    expanded = np.asarray(run.student.expansion.apply(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_array_equal(model.expansion(torch.tensor(ids), torch.tensor(mask)).numpy(), expanded)

    # Generation with a KV cache expands each new byte with the bytes before it.
    prompt = torch.tensor(ids[:1, :8])
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                               do_sample=False)[0].numpy()
    full = np.asarray(run.student.forward(params, jnp.asarray(generated[None, :-1], jnp.int32),
                                          jnp.ones((1, len(generated) - 1), jnp.int32),
                                          expansion=run.student.expansion).logits)[0]
    np.testing.assert_array_equal(full[7:].argmax(-1), generated[8:])

    # tokenkit reads the export back with its expansion, without naming the old model.
    loaded = load_eval_model(str(out), tokenizer)
    assert loaded.expansion is not None
    again = np.asarray(loaded.forward(loaded.params, jnp.asarray(ids, jnp.int32),
                                      jnp.asarray(mask, jnp.int32), expansion=loaded.expansion).logits)
    np.testing.assert_allclose(again[real], ours[real], atol=1e-4, rtol=0)


def _run_bindings(model_dir, *extra):
    return [
        f"build_run.student_model = '{model_dir}'",
        f"build_run.student_tokenizer = '{LLAMA3}'",
        f"build_run.target_tokenizer = '{GEMMA2}'",
        "build_run.train_model_mode = 'lora'", "build_run.lora = @LoraConfig()",
        "LoraConfig.rank = 4", "build_run.dtype = 'float32'",
        f"train/make_source.paths = ['{VALIDATION}']", f"eval/make_source.paths = ['{VALIDATION}']",
        "DataConfig.batch_size = 4", "DataConfig.max_student_length = 32",
        "DataConfig.max_teacher_length = 32", "DataConfig.eval_texts = 1", "DataConfig.eval_chats = 1",
        "DataConfig.eval_max_length = 64", "learning_rate_schedule.learning_rate = 1e-2",
        "train.losses = ['sft']", "train.n_model_parallel = 1", "train.log_interval = 1",
        "train.steps = 3", "train.save_interval = 1", *extra,
    ]


def test_any_checkpoint_exports_like_the_end_of_the_run(tiny_model, tmp_path):
    workdir = tmp_path / "run"
    entry.parse_gin([], _run_bindings(tiny_model), finalize=False)
    trainer.train(workdir)
    entry.save_operative_config(workdir)
    final = load_file(str(workdir / export.EXPORT_DIR / "model.safetensors"))
    assert final["model.embed_tokens.weight"].shape == (4000, 32)  # 4032 rows trimmed to 4000

    gin.clear_config()
    entry.parse_gin([str(workdir / entry.OPERATIVE_CONFIG_NAME)], [], finalize=False)
    export.export_checkpoint(workdir, tmp_path / "step3")
    export.export_checkpoint(workdir, tmp_path / "step1", step=1)
    latest, first = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("step3", "step1"))
    assert sorted(latest) == sorted(final)
    for name in final:
        np.testing.assert_array_equal(latest[name], final[name])
    moved = [n for n in final if not np.array_equal(first[n], final[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in moved  # LoRA deltas are merged
    for name in ("config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "step1" / name).is_file()
    assert json.loads((tmp_path / "step1" / "config.json").read_text()) == json.loads(
        (workdir / export.EXPORT_DIR / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="saved steps: 1, 2, 3"):
        export.export_checkpoint(workdir, tmp_path / "nope", step=7)


@pytest.mark.slow
def test_export_command_line(tiny_model, tmp_path):
    workdir = tmp_path / "run"
    entry.parse_gin([], _run_bindings(tiny_model, "train.steps = 2", "train.export = False"),
                    finalize=False)
    trainer.train(workdir)
    entry.save_operative_config(workdir)
    before = (workdir / entry.OPERATIVE_CONFIG_NAME).read_text()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tokenkit.export", f"--workdir={workdir}", "--step=1",
         f"--output={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported step 1" in result.stderr
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["model.embed_tokens.weight"].shape == (4000, 32)
    assert (workdir / entry.OPERATIVE_CONFIG_NAME).read_text() == before  # only read
    missing = subprocess.run(
        [sys.executable, "-m", "tokenkit.export", f"--workdir={tmp_path / 'none'}",
         f"--output={tmp_path / 'out2'}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300)
    assert missing.returncode == 2 and "operative_config.gin does not exist" in missing.stderr
