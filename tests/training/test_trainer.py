"""The trainer end to end on a tiny random model: exact resume, preemption, meshes,
accumulation, transfer setups, and the errors a user must see."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from tokenkit import entry
from tokenkit.data.sources import MalformedRecordError
from tokenkit.models import init_params, make_transformer, save_pretrained
from tokenkit.training import evaluator, trainer
from tokenkit.training.metrics import read_metrics
from tokenkit.training.setup import random_init_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"

LLAMA3 = f"{DATA_DIR}/tokenizers/llama3_bpe:source=Llama3"
GEMMA2 = f"{DATA_DIR}/tokenizers/gemma2_sp:source=Gemma2"
VALIDATION = str(DATA_DIR / "corpus" / "validation.jsonl")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with the llama3_bpe vocabulary, in the HF format."""
    config = random_init_config(
        vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    params = init_params(make_transformer(config), 0)
    out = tmp_path_factory.mktemp("tiny_model")
    save_pretrained(out, config, params)
    return str(out)


def _configure(model_dir, *bindings):
    gin.clear_config()
    entry.parse_gin([], [
        f"build_run.student_model = '{model_dir}'",
        f"build_run.student_tokenizer = '{LLAMA3}'",
        "build_run.dtype = 'float32'",
        f"train/make_source.paths = ['{VALIDATION}']",
        f"eval/make_source.paths = ['{VALIDATION}']",
        "DataConfig.batch_size = 4",
        "DataConfig.max_teacher_length = 32",
        "DataConfig.max_student_length = 48",
        "DataConfig.eval_texts = 2",
        "DataConfig.eval_chats = 3",
        "DataConfig.eval_max_length = 64",
        "learning_rate_schedule.learning_rate = 1e-3",
        "train.n_model_parallel = 1",
        "train.log_interval = 1",
        "train.sync_interval = 1",
        *bindings,
    ], finalize=False)


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def _export(workdir):
    return load_file(str(workdir / trainer.EXPORT_DIR / "model.safetensors"))


def _check_export_stops_at_end_of_turn(workdir, spec):
    """The export's config.json names the family's tokens, and transformers' generate()
    on it stops at the family's end-of-turn token."""
    import torch
    import transformers
    from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

    from tokenkit.byteify import load_byteify_tokenizer

    export = workdir / trainer.EXPORT_DIR
    tokenizer = load_byteify_tokenizer(spec)
    family = tokenizer.family
    end_of_turn = tokenizer.convert_tokens_to_ids(family.first_token("eot"))
    config = json.loads((export / "config.json").read_text())
    eos = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    assert end_of_turn in eos
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["pad_token_id"] == tokenizer.pad_token_id

    class EndTurnAtStep3(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == prompt.shape[1] + 3:
                scores[:] = -1e9
                scores[:, end_of_turn] = 0.0
            return scores

    # Byte-level students with input-id expansion bring their modeling file.
    model = transformers.AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    prompt = torch.tensor([tokenizer.encode("Hello there", add_special_tokens=True)])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                         do_sample=False, logits_processor=LogitsProcessorList([EndTurnAtStep3()]))
    new = out[0, prompt.shape[1]:].tolist()
    assert len(new) == 4 and new[-1] == end_of_turn  # three tokens, then the end of turn


def test_resume_after_a_crash_is_exact(tiny_model, tmp_path, monkeypatch):
    settings = ("train.steps = 6", "train.save_interval = 3", "train.losses = ['sft']")
    _configure(tiny_model, *settings)
    trainer.train(tmp_path / "straight")

    calls = {"n": 0}
    real = trainer._to_global

    def crash_on_step_5(batch, shardings):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real(batch, shardings)

    monkeypatch.setattr(trainer, "_to_global", crash_on_step_5)
    _configure(tiny_model, *settings)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tmp_path / "resumed")
    monkeypatch.setattr(trainer, "_to_global", real)
    _configure(tiny_model, *settings)
    trainer.train(tmp_path / "resumed")

    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    _check_export_stops_at_end_of_turn(tmp_path / "straight", LLAMA3)
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert straight == resumed  # identical logged losses, bit for bit
    a, b = _export(tmp_path / "straight"), _export(tmp_path / "resumed")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_grad_accumulation_equals_one_big_batch(tiny_model, tmp_path):
    base = ("train.steps = 2", "train.losses = ['sft']")
    _configure(tiny_model, *base, "train.grad_acc_steps = 1")
    trainer.train(tmp_path / "one")
    _configure(tiny_model, *base, "train.grad_acc_steps = 2")
    trainer.train(tmp_path / "two")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    for step in (1, 2):
        assert one[step] == pytest.approx(two[step], rel=1e-5)
    a, b = _export(tmp_path / "one"), _export(tmp_path / "two")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_2x4_mesh_gives_the_single_device_loss(tiny_model, tmp_path):
    base = ("train.steps = 2", "train.losses = ['sft', 'alm_unconstrained']",
            f"build_run.target_tokenizer = '{GEMMA2}'", "DataConfig.batch_size = 8")
    _configure(tiny_model, *base, "train.n_data_parallel = 1", "train.n_model_parallel = 1")
    trainer.train(tmp_path / "single")
    _configure(tiny_model, *base, "train.n_data_parallel = 2", "train.n_model_parallel = 4")
    trainer.train(tmp_path / "mesh")
    single, mesh = _losses(tmp_path / "single"), _losses(tmp_path / "mesh")
    for step in (1, 2):
        assert single[step] == pytest.approx(mesh[step], rel=1e-4)


@pytest.mark.slow
def test_transfer_to_bytes_with_expansion_latents_and_gradmag(tiny_model, tmp_path):
    _configure(
        tiny_model,
        "train.steps = 3",
        "train.losses = ['sft', 'alm_unconstrained', 'alm_latents']",
        f"build_run.target_tokenizer = '{LLAMA3}:conversion=byte'",
        "build_run.expand_input_ids = True",
        "build_run.output_embeddings_mode = 'untie'",
        "Aggregation.multitask_aggregation_fn = 'approx_gradmag_preserve_mag'",
        "DataConfig.max_student_length = 96",
    )
    result = trainer.train(tmp_path / "bytes")
    assert set(result) == {f"{side}/{key}" for side in ("student", "teacher")
                           for key in ("bits_per_byte", "answer_bits_per_byte")}
    assert all(np.isfinite(v) for v in result.values())
    records = [r for r in read_metrics(tmp_path / "bytes") if r["split"] == "train"]
    assert "alm_unconstrained/teacher_avg_chunk_lengths" in records[-1] or any(
        k.startswith("alm_unconstrained/") for k in records[-1]
    )
    assert any(k.startswith("approx_loss_weight/") for k in records[-1])
    config = json.loads((tmp_path / "bytes" / trainer.EXPORT_DIR / "config.json").read_text())
    from tokenkit.byteify import load_byteify_tokenizer

    # Padded to 320 rows in training, trimmed to the tokenizer's ids in the export.
    assert config["vocab_size"] == len(load_byteify_tokenizer(f"{LLAMA3}:conversion=byte")) < 320
    assert config["tie_word_embeddings"] is False
    _check_export_stops_at_end_of_turn(tmp_path / "bytes", f"{LLAMA3}:conversion=byte")


def test_lora_transfer_keeps_the_teacher_frozen(tiny_model, tmp_path):
    _configure(
        tiny_model, "train.steps = 2", "train.losses = ['sft', 'alm_unconstrained']",
        f"build_run.target_tokenizer = '{GEMMA2}'",
        "build_run.train_model_mode = 'lora'", "build_run.lora = @LoraConfig()",
        "LoraConfig.rank = 4",
    )
    result = trainer.train(tmp_path / "lora")
    assert result["student/bits_per_byte"] > 0 and result["teacher/bits_per_byte"] > 0
    exported = _export(tmp_path / "lora")
    # 4000 ids: the run pads the vocabulary to 4032 rows, the export trims the padding.
    assert exported["model.embed_tokens.weight"].shape == (4000, 32)
    _check_export_stops_at_end_of_turn(tmp_path / "lora", GEMMA2)


def test_malformed_training_data_names_file_and_line(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    _configure(tiny_model, "train.steps = 1", f"train/make_source.paths = ['{bad}']")
    with pytest.raises(MalformedRecordError, match="bad.jsonl:2"):
        trainer.train(tmp_path / "run")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model, tmp_path):
    _configure(
        tiny_model, "train.steps = 8", "train.save_interval = 1",
        "learning_rate_schedule.learning_rate = 1e30", "make_optimizer.max_grad_norm = None",
    )
    with pytest.raises(trainer.NonFiniteLossError, match="Loss is nan at step") as info:
        trainer.train(tmp_path / "run")
    bad_step = int(str(info.value).split("at step ")[1].split(":")[0])
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps and max(steps) < bad_step


def test_unknown_loss_lists_the_valid_ones(tiny_model, tmp_path):
    _configure(tiny_model, "train.losses = ['alm_everything']")
    with pytest.raises(ValueError, match="valid losses: .*alm_unconstrained"):
        trainer.train(tmp_path / "run")


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(tiny_model, tmp_path):
    workdir = tmp_path / "run"
    params = [
        f"build_run.student_model = '{tiny_model}'",
        f"build_run.student_tokenizer = '{LLAMA3}'",
        "build_run.dtype = 'float32'",
        f"train/make_source.paths = ['{VALIDATION}']",
        f"eval/make_source.paths = ['{VALIDATION}']",
        "DataConfig.batch_size = 4",
        "DataConfig.max_student_length = 32",
        "DataConfig.eval_texts = 1",
        "train.log_interval = 1",
        "train.n_model_parallel = 1",
        "learning_rate_schedule.warmup_steps = 0",
    ]
    command = [sys.executable, "-m", "tokenkit.train", f"--workdir={workdir}",
               *[f"--gin_param={p}" for p in params]]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([*command, "--gin_param=train.steps = 100000"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or not read_metrics(workdir):
        assert proc.poll() is None and time.time() < deadline, "the run did not start training"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "Preempted: saved step" in output
    saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved >= 1

    resumed = subprocess.run([*command, f"--gin_param=train.steps = {saved + 2}"], cwd=REPO_ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from step {saved}" in resumed.stderr
    assert sorted(_losses(workdir)) == list(range(1, saved + 3))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["baseline_dskd", "baseline_uld", "baseline_mined", "alm_unbiased", "alm_space"])
def test_each_cross_tokenizer_loss_trains(tiny_model, tmp_path, loss):
    _configure(
        tiny_model, "train.steps = 2", f"train.losses = ['sft', '{loss}']",
        f"build_run.target_tokenizer = '{GEMMA2}'",
        f"TokenizerPair.path = '{DATA_DIR}/tokenizer_pairs/llama3_bpe__gemma2_sp'",
    )
    trainer.train(tmp_path / loss)
    last = [r for r in read_metrics(tmp_path / loss) if r["split"] == "train"][-1]
    assert np.isfinite(last[f"loss/{loss}"]) and last[f"loss/{loss}"] > 0


@pytest.mark.slow
def test_lm_eval_tasks_at_evaluation(tiny_model, tmp_path):
    _configure(
        tiny_model, "train.steps = 1", "train.losses = ['sft', 'alm_unconstrained']",
        f"build_run.target_tokenizer = '{GEMMA2}'", "eval.tasks = ['tiny_world_mc']",
        "eval.limit = 4", "eval.lengths = [64, 128]", "eval.tokens_per_batch = 512",
    )
    result = trainer.train(tmp_path / "run")
    for side in ("student", "teacher"):
        assert 0.0 <= result[f"{side}/tiny_world_mc/acc"] <= 1.0
    assert (tmp_path / "run" / "lm_eval" / "student_step_1").is_dir()


def test_answer_bits_per_byte_scores_only_the_answer(tiny_model):
    import math

    import jax.numpy as jnp

    from tokenkit import prompts
    from tokenkit.byteify import load_byteify_tokenizer
    from tokenkit.evaluation.model import EvalModel
    from tokenkit.models import load_pretrained

    tokenizer = load_byteify_tokenizer(LLAMA3)
    config, params = load_pretrained(tiny_model)
    model = EvalModel.build(config, params, tokenizer)
    chat = [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}]
    got = evaluator.answer_bits_per_byte(model, [chat])

    prompt = prompts.encode_prompt(
        prompts.preprocess_messages(chat[:1], add_generation_prompt=True), tokenizer).ids
    answer = prompts.encode_prompt("cba", tokenizer).ids
    ids = jnp.asarray([list(prompt) + list(answer)])
    logits = make_transformer(config).apply({"params": params}, ids, jnp.ones_like(ids)).logits[0]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    expected = -sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(answer))
    assert got == pytest.approx(expected / math.log(2) / 3, rel=1e-5)


def test_dry_run_compiles_reports_the_cost_and_trains_nothing(tiny_model, tmp_path):
    _configure(tiny_model, "train.steps = 5", "train.losses = ['sft', 'alm_unconstrained']",
               f"build_run.target_tokenizer = '{GEMMA2}'", "train.dry_run = True")
    result = trainer.train(tmp_path / "dry")
    cost = result["dry_run"]
    # sft + ALM: the student trains on 4 x 48 tokens, the teacher reads 4 x 32.
    assert cost["tokens"] == 4 * 48 + 4 * 32
    from tokenkit.models import load_config
    from tokenkit.training.cost import forward_flops_per_token

    teacher = load_config(tiny_model)
    assert cost["xla_flops"] > 0 and cost["temp_bytes"] > 0 and cost["argument_bytes"] > 0
    # The model count: the student (4000 Gemma tokens padded to 4032) trains, the teacher reads.
    import dataclasses
    student = dataclasses.replace(teacher, vocab_size=4032)
    expected = (3 * forward_flops_per_token(student, 48) * 4 * 48
                + forward_flops_per_token(teacher, 32) * 4 * 32)
    assert cost["model_flops"] == pytest.approx(expected)
    assert not (tmp_path / "dry" / "checkpoints").exists()
    assert not (tmp_path / "dry" / "metrics.jsonl").exists()


def test_mfu_is_logged_with_a_device_peak(tiny_model, tmp_path):
    _configure(tiny_model, "train.steps = 2", "train.losses = ['sft']",
               "train.device_peak_tflops = 0.5")
    trainer.train(tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert all(0 < r["mfu"] < 1 for r in records)


def test_latents_with_queries_keys_and_values(tiny_model, tmp_path):
    """alm_latents with `+qkv`: the models return each layer's q/k/v projections."""
    _configure(tiny_model, "train.steps = 2", "train.losses = ['sft', 'alm_latents']",
               f"build_run.target_tokenizer = '{GEMMA2}'",
               "LatentsOptions.latents_to_align = 'last_hidden_state+qkv'",
               "train.export = False")
    trainer.train(tmp_path / "qkv")
    last = [r for r in read_metrics(tmp_path / "qkv") if r["split"] == "train"][-1]
    assert last["alm_latents/attention_latent_loss"] > 0
    assert last["alm_latents/hidden_state_latent_loss"] > 0
