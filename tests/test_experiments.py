"""Every experiment file parses and binds against the real configurables; the tiny-world
ones point at files that exist."""

from pathlib import Path

import gin
import pytest

from tokenkit import entry
from tokenkit.training import trainer  # noqa: F401  registers every configurable train uses

REPO = Path(__file__).resolve().parent.parent
# zett_hn_*.gin configure the hypernetwork trainer (tests/training/test_zett_hn.py).
EXPERIMENTS = sorted(p.name for p in (REPO / "experiments").glob("*.gin")
                     if not p.name.startswith("zett_hn_"))
REAL_SCALE = {
    "llama3_to_qwen2_gpu.gin", "llama3_to_qwen2_tpu.gin", "llama3_to_byte_gpu.gin",
    "gemma2_distill_from_openmath2_llama_gpu.gin",
}
# On the real assets (tools/real_assets.py puts them into the user's cache).
REAL_ASSETS = {"smollm2_to_qwen2.gin", "smollm2_to_bytes.gin", "smollm2_to_qwen2_gpu.gin",
               "smollm2_to_qwen2_tpu.gin", "smollm2_to_bytes_gpu.gin"}


@pytest.fixture(autouse=True)
def _clear():
    gin.clear_config()
    yield
    gin.clear_config()


def test_the_required_experiments_exist():
    required = {"pretrain_tiny_teacher.gin", "alm_byte.gin", "alm_subword.gin",
                "baseline_dskd.gin", "baseline_uld.gin", "baseline_mined.gin"} | REAL_SCALE
    assert required <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_parses_and_binds(name):
    entry.parse_gin([f"experiments/{name}"], finalize=False)
    losses = gin.query_parameter("train.losses")
    assert losses and all(isinstance(x, str) for x in losses)
    assert gin.query_parameter("build_run.student_tokenizer")


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - REAL_SCALE - REAL_ASSETS))
def test_tiny_world_experiments_use_local_files(name):
    entry.parse_gin([f"experiments/{name}"], finalize=False)
    for key in ("build_run.student_model", "build_run.target_tokenizer",
                "TokenizerPair.path"):
        try:
            value = gin.query_parameter(key)
        except ValueError:
            continue  # not bound by this experiment
        if value:
            path = value.split(":")[0]
            assert (REPO / path).exists(), f"{name}: {key} = {value!r} names a missing path"
    for path in gin.query_parameter("train/make_source.paths"):
        assert (REPO / path).exists()


def test_real_scale_experiments_name_hub_models():
    entry.parse_gin(["experiments/llama3_to_qwen2_gpu.gin"], finalize=False)
    assert gin.query_parameter("build_run.student_model") == "meta-llama/Llama-3.2-3B-Instruct"
    assert gin.query_parameter("build_run.target_tokenizer").endswith(":target=Llama3")
    gin.clear_config()
    entry.parse_gin(["experiments/llama3_to_qwen2_tpu.gin"], finalize=False)
    assert gin.query_parameter("train.n_model_parallel") == 8


@pytest.mark.slow
def test_embedded_default_runs_end_to_end(tmp_path):
    """`experiments/alm_byte.gin` as the README runs it, at a few steps."""
    import os
    import subprocess
    import sys

    workdir = tmp_path / "alm_byte"
    result = subprocess.run(
        [sys.executable, "-m", "tokenkit.train", "--gin_file=experiments/alm_byte.gin",
         f"--workdir={workdir}", "--gin_param=train.steps = 4",
         "--gin_param=train.eval_interval = 0", "--gin_param=train.save_interval = 2",
         "--gin_param=learning_rate_schedule.warmup_steps = 1",
         "--gin_param=DataConfig.eval_texts = 4"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Student bits per byte on the validation texts" in result.stdout
    assert "teacher" in result.stdout
    assert (workdir / "export" / "model.safetensors").is_file()
    assert (workdir / "operative_config.gin").is_file()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


@pytest.mark.parametrize("name", sorted(REAL_ASSETS))
def test_real_asset_experiments_name_the_cache_and_repo_data(name):
    entry.parse_gin([f"experiments/{name}"], finalize=False)
    assert gin.query_parameter("build_run.student_model").startswith("~/.cache/tokenkit/real_assets/")
    assert gin.query_parameter("build_run.student_tokenizer").endswith(":source=auto")
    for scope in ("prose", "eval_prose"):
        for path in gin.query_parameter(f"{scope}/make_source.paths"):
            assert (REPO / path).exists(), path


def test_real_scale_smollm2_variants_scale_the_cpu_files():
    entry.parse_gin(["experiments/smollm2_to_qwen2_tpu.gin"], finalize=False)
    assert gin.query_parameter("train.n_model_parallel") == 8
    assert gin.query_parameter("DataConfig.batch_size") == 64
    assert gin.query_parameter("build_run.dtype") == "bfloat16"
    assert gin.query_parameter("train.losses") == ["sft", "alm_unconstrained"]
    gin.clear_config()
    entry.parse_gin(["experiments/smollm2_to_bytes_gpu.gin"], finalize=False)
    assert gin.query_parameter("DataConfig.max_student_length") == 2048
    assert gin.query_parameter("build_run.expand_input_ids") is True
    assert gin.query_parameter("train.losses") == ["sft", "alm_unconstrained", "alm_latents"]
