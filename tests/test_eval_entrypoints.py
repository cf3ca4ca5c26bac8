"""The evaluation entrypoints run end to end in subprocesses on tiny random models:
`tokenkit.eval`, `tokenkit.eval_lockstep` (Gin) and `tokenkit.lm_eval` (lm-eval's CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.support import (
    LLAMA_SPEC,
    QWEN_AS_LLAMA_SPEC,
    QWEN_SPEC,
    random_params,
    tiny_config,
)
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.models import save_pretrained

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _checkpoint(root: Path, name: str, spec: str, seed: int, **overrides) -> str:
    config = tiny_config(len(load_byteify_tokenizer(spec)) + 64, **overrides)
    path = root / name
    save_pretrained(path, config, random_params(config, seed))
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry_models")
    return {
        "llama": _checkpoint(root, "llama", LLAMA_SPEC, 1),
        "qwen": _checkpoint(root, "qwen", QWEN_SPEC, 2, architecture="qwen2", qkv_bias=True),
        "qwen_as_llama": _checkpoint(root, "qwen_as_llama", QWEN_AS_LLAMA_SPEC, 3),
    }


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def test_eval_writes_lm_eval_results(checkpoints, tmp_path):
    result = _run([
        "-m", "tokenkit.eval", "--gin_file=gin/eval/tiny_world.gin",
        f"--gin_param=eval.model='{checkpoints['llama']}'",
        f"--gin_param=eval.tokenizer='{LLAMA_SPEC}'",
        "--gin_param=eval.limit=4", "--gin_param=eval.lengths=[64, 128]",
        "--gin_param=eval.bootstrap_iters=0", f"--workdir={tmp_path}",
    ])
    metrics = _metrics(tmp_path / "lm_eval_results.json")
    assert 0 <= metrics["tiny_world_mc"]["acc,none"] <= 1
    assert "exact_match,none" in metrics["tiny_world_gen"]
    assert "tiny_world_mc" in result.stdout  # the table
    assert "eval.tasks" in (tmp_path / "operative_config.gin").read_text()


def test_eval_lockstep_runs_a_gin_ensemble(checkpoints, tmp_path):
    ensemble_gin = tmp_path / "pair.gin"
    ensemble_gin.write_text(
        "ensemble_models.models = [\n"
        f"    {{'pretrained': '{checkpoints['qwen']}', 'tokenizer': '{QWEN_SPEC}', 'add_bos': False}},\n"
        f"    {{'pretrained': '{checkpoints['qwen_as_llama']}', 'tokenizer': '{QWEN_AS_LLAMA_SPEC}'}},\n"
        "]\n"
        "ensemble_models.combine_strategy = 'mean_prob'\n"
    )
    workdir = tmp_path / "out"
    _run([
        "-m", "tokenkit.eval_lockstep", f"--gin_file={ensemble_gin}",
        "--gin_file=gin/eval/tiny_world.gin", "--gin_param=eval_lockstep.limit=4",
        "--gin_param=eval_lockstep.lengths=[64, 128]",
        "--gin_param=eval_lockstep.bootstrap_iters=0", f"--workdir={workdir}",
    ])
    metrics = _metrics(workdir / "lm_eval_results.json")
    assert 0 <= metrics["tiny_world_mc"]["acc,none"] <= 1
    assert "exact_match,none" in metrics["tiny_world_gen"]


def test_lm_eval_command_line_knows_tokenkit(checkpoints, tmp_path):
    result = _run([
        "-m", "tokenkit.lm_eval", "--model", "tokenkit",
        "--model_args", f"pretrained={checkpoints['llama']},tokenizer={LLAMA_SPEC},lengths=64;128",
        "--tasks", "tiny_world_mc", "--include_path", "data/eval_tasks", "--limit", "4",
        "--output_path", str(tmp_path),
    ])
    assert "tiny_world_mc" in result.stdout and "acc" in result.stdout
    (written,) = tmp_path.rglob("results_*.json")
    assert 0 <= _metrics(written)["tiny_world_mc"]["acc,none"] <= 1


def test_eval_lockstep_runs_the_shipped_pivot_ensemble(tmp_path):
    """gin/ensembles/tiny_world_mined.gin: a Gemma2-SentencePiece model (the pivot; random
    here) and the shipped Llama3-BPE tiny teacher through the pair's MinED mapping."""
    pivot = _checkpoint(tmp_path, "gemma2_pivot", "data/tokenizers/gemma2_sp:source=Gemma2", 4)
    workdir = tmp_path / "out"
    result = _run([
        "-m", "tokenkit.eval_lockstep", "--gin_file=gin/ensembles/tiny_world_mined.gin",
        "--gin_file=gin/eval/tiny_world.gin", f"--gin_param=GEMMA2_MODEL='{pivot}'",
        "--gin_param=eval_lockstep.limit=4", "--gin_param=eval_lockstep.lengths=[64, 128]",
        "--gin_param=eval_lockstep.bootstrap_iters=0", f"--workdir={workdir}",
    ])
    metrics = _metrics(workdir / "lm_eval_results.json")
    assert 0 <= metrics["tiny_world_mc"]["acc,none"] <= 1
    assert "exact_match,none" in metrics["tiny_world_gen"]
    assert "through the first member's vocabulary (MinED mappings)" in result.stderr
