"""Training as two JAX processes with two CPU devices each (`tools/multiprocess.py`),
held to one process with four devices on the same global batch: the loss curve, the
in-run evaluation and the export; SIGTERM to one process and to all, then resuming.

The 2-process runs are real `python -m tokenkit.train` processes joined by
`jax.distributed` (gloo collectives); the 1-process reference runs in this process on
4 of its 8 simulated devices.
"""

import json
import signal
import sys
import time
from pathlib import Path

import gin
import numpy as np
import pytest
from safetensors.numpy import load_file

from tokenkit import entry
from tokenkit.training import trainer
from tokenkit.training.metrics import read_metrics
from tools import multiprocess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LLAMA3 = f"{REPO}/data/tokenizers/llama3_bpe:source=Llama3"
GEMMA2 = f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2"
VALIDATION = REPO / "data" / "corpus" / "validation.jsonl"
TIMEOUT_S = 600

# A random 2-layer Llama trained from scratch (no checkpoint to write), constant learning
# rate (so a run's curve does not depend on train.steps), a log line every step.
BASE = [
    "build_run.student_config = @random_init_config()",
    "random_init_config.vocab_size = 4096", "random_init_config.hidden_size = 32",
    "random_init_config.intermediate_size = 64", "random_init_config.num_hidden_layers = 2",
    "random_init_config.num_attention_heads = 4", "random_init_config.num_key_value_heads = 2",
    f"build_run.student_tokenizer = '{LLAMA3}'", "build_run.dtype = 'float32'",
    f"train/make_source.paths = ['{VALIDATION}']", f"eval/make_source.paths = ['{VALIDATION}']",
    "DataConfig.batch_size = 8", "DataConfig.max_student_length = 32",
    "DataConfig.max_teacher_length = 32", "DataConfig.eval_texts = 2", "DataConfig.eval_chats = 2",
    "DataConfig.eval_max_length = 64", "learning_rate_schedule.learning_rate = 3e-3",
    "learning_rate_schedule.decay = 'constant'", "train.log_interval = 1", "train.sync_interval = 1",
]


def _start(workdir: Path, bindings: list[str], logs: Path) -> multiprocess.ProcessGroup:
    command = [sys.executable, "-m", "tokenkit.train", f"--workdir={workdir}",
               *[f"--gin_param={b}" for b in bindings]]
    return multiprocess.start(command, num_processes=2, devices_per_process=2, log_dir=logs)


def _finish(group: multiprocess.ProcessGroup) -> list[str]:
    results = group.wait(TIMEOUT_S)
    multiprocess.check(results)
    return [r.log for r in results]


def _train_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]


def _signal_when_past(group, workdir: Path, step: int, process_ids) -> None:
    """SIGTERM to `process_ids` once the run has logged a step after `step`."""
    deadline = time.monotonic() + TIMEOUT_S
    while not any(s > step for s in _train_steps(workdir)):
        assert all(p.poll() is None for p in group.procs), group.log(0)[-3000:]
        assert time.monotonic() < deadline, "the run did not train"
        time.sleep(0.2)
    group.send_signal(signal.SIGTERM, process_ids)


def _preempted_step(logs: list[str]) -> int:
    steps = {int(log.split("Preempted: saved step ")[1].split(";")[0]) for log in logs}
    assert len(steps) == 1, f"the processes stopped at different steps: {steps}"
    return steps.pop()


def _reference(tmp_path: Path, bindings: list[str]):
    """The same run in this process (1 process, 4 of its devices): losses, final eval,
    export."""
    gin.clear_config()
    entry.parse_gin([], bindings, finalize=False)
    workdir = tmp_path / "reference"
    try:
        final = trainer.train(workdir)
    finally:
        gin.clear_config()
    return workdir, final


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def _eval(workdir: Path) -> dict:
    return [r for r in read_metrics(workdir) if r["split"] == "eval"][-1]


def _check_same_run(ours: Path, reference: Path) -> None:
    a, b = _losses(ours), _losses(reference)
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4), step
    got, want = _eval(ours), _eval(reference)
    assert set(got) == set(want)
    for key in want:
        if key not in ("step", "split"):
            assert got[key] == pytest.approx(want[key], rel=1e-4), key
    exported, expected = (load_file(str(w / trainer.EXPORT_DIR / "model.safetensors"))
                          for w in (ours, reference))
    assert sorted(exported) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(exported[name], expected[name], rtol=1e-3, atol=1e-5)


def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
    """SFT on a 2 x 2 (data x model) mesh, data split across the processes; SIGTERM to
    process 1 alone, then to both, then a run to the end."""
    workdir = tmp_path / "run"
    bindings = [*BASE, "train.losses = ['sft']", "train.n_data_parallel = 2",
                "train.n_model_parallel = 2"]
    endless = [*bindings, "train.steps = 100000"]

    group = _start(workdir, endless, tmp_path / "logs_one")
    _signal_when_past(group, workdir, 0, [1])
    first = _preempted_step(_finish(group))

    group = _start(workdir, endless, tmp_path / "logs_all")
    _signal_when_past(group, workdir, first, None)
    logs = _finish(group)
    assert all(f"Resumed from step {first}" in log for log in logs)
    second = _preempted_step(logs)
    assert second > first

    steps = second + 2
    logs = _finish(_start(workdir, [*bindings, f"train.steps = {steps}"], tmp_path / "logs_end"))
    assert _train_steps(workdir) == list(range(1, steps + 1))  # each step logged once
    # One writer: process 0 wrote the metrics and the operative config.
    assert "train.n_data_parallel = 2" in (workdir / entry.OPERATIVE_CONFIG_NAME).read_text()
    assert "Process 1 of 2 reads part 2 of 2 of every global batch" in logs[1]

    reference, _ = _reference(tmp_path, [*bindings, f"train.steps = {steps}"])
    _check_same_run(workdir, reference)


def test_two_processes_distill_with_the_model_split_across_them(tmp_path):
    """ALM transfer to another tokenizer on a 1 x 4 mesh: every parameter is split over
    both processes (each reads the whole batch); in-run lm-eval tasks and the export
    gather them."""
    workdir = tmp_path / "run"
    bindings = [*BASE, "train.losses = ['sft', 'alm_unconstrained']",
                f"build_run.target_tokenizer = '{GEMMA2}'", "train.n_data_parallel = 1",
                "train.n_model_parallel = 4", "train.steps = 3",
                "eval.tasks = ['tiny_world_mc']", "eval.limit = 4", "eval.lengths = [64, 128]",
                "eval.tokens_per_batch = 512", "eval.bootstrap_iters = 0"]
    logs = _finish(_start(workdir, bindings, tmp_path / "logs"))
    assert "Process 1 of 2 reads part 1 of 1 of every global batch" in logs[1]  # all rows
    reference, final = _reference(tmp_path, bindings)
    _check_same_run(workdir, reference)
    assert 0 <= final["student/tiny_world_mc/acc"] <= 1
    results = json.loads((workdir / "lm_eval" / "student_step_3" / "lm_eval_results.json").read_text())
    assert "tiny_world_mc" in results["results"]
