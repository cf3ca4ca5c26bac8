"""Training-step throughput and the share of time the step waits for data, as a table.

    python tools/benchmarks/train.py [--experiments alm_byte,alm_subword] [--steps 30]
                                     [--workers 0,1]

Runs each experiment (with its own Gin file) for `--steps` steps, once per number of
Grain worker processes, in a fresh process each (so compilation and workers start cold
as in a real run), and reads the run's `metrics.jsonl`. The first logged interval holds
the compilation and is left out. Columns: seconds per step, real (non-padding) student
and teacher tokens per second, and the fraction of wall time the loop spent waiting for
the next batch (`data_wait_fraction`). Evaluation and checkpoints are switched off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(experiment: str, steps: int, workers: int, log_interval: int) -> list[dict]:
    """Trains `experiment` for `steps` steps; returns its train metric records."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable, "-m", "tokenkit.train",
            f"--gin_file=experiments/{experiment}.gin", f"--workdir={workdir}",
            f"--gin_param=train.steps = {steps}",
            f"--gin_param=train.log_interval = {log_interval}",
            "--gin_param=train.eval_interval = 0", "--gin_param=train.save_interval = 0",
            "--gin_param=train.eval_at_step_zero = False", "--gin_param=train.export = False",
            f"--gin_param=DataConfig.num_workers = {workers}",
            "--gin_param=DataConfig.eval_texts = 1",
            "--gin_param=learning_rate_schedule.warmup_steps = 1",
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if result.returncode != 0:
            raise RuntimeError(f"{experiment} failed:\n{result.stderr[-3000:]}")
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["split"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="alm_byte,alm_subword")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log_interval", type=int, default=5)
    parser.add_argument("--workers", default="0,1")
    args = parser.parse_args()
    rows = []
    for experiment in args.experiments.split(","):
        for workers in map(int, args.workers.split(",")):
            records = run(experiment, args.steps, workers, args.log_interval)[1:]  # no compile
            rows.append((
                experiment, workers,
                statistics.median(r["seconds_per_step"] for r in records),
                statistics.median(r["tokens_per_second"] for r in records),
                statistics.median(r.get("teacher_tokens_per_second", 0.0) for r in records),
                statistics.mean(r["data_wait_fraction"] for r in records),
            ))
    header = ("experiment", "workers", "s/step", "student tok/s", "teacher tok/s", "data wait")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, workers, sps, stok, ttok, wait in rows:
        print(f"{name} | {workers} | {sps:.3f} | {stok:,.0f} | {ttok:,.0f} | {100 * wait:.1f}%")


if __name__ == "__main__":
    main()
