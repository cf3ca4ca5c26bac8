"""`python -m tokenkit.score`, `eval` and `eval_lockstep` as two JAX processes
(`tools/multiprocess.py`) give what one process gives (computed here, in-process), and
only process 0 writes."""

import json
import sys
from pathlib import Path

import gin
import pytest

from tokenkit import entry, score
from tokenkit.evaluation import harness
from tools import multiprocess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "data" / "models" / "tiny_teacher"
SPEC = f"{MODEL}:source=Llama3"


def _two_processes(tmp_path: Path, module: str, *args: str) -> list[str]:
    results = multiprocess.run([sys.executable, "-m", module, *args], num_processes=2,
                               devices_per_process=1, log_dir=tmp_path / "logs", timeout=600)
    multiprocess.check(results)
    return [r.log for r in results]


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_score_splits_the_lines_and_gathers_them_in_order(tmp_path):
    lines = ["The tiny world.", "", "Zwei Prozesse zählen Bytes.", "x" * 700,
             "def f(x):\r", "return x + 1", "Last line."]
    text_file = tmp_path / "lines.txt"
    text_file.write_text("\n".join(lines) + "\n", newline="")
    _two_processes(tmp_path, "tokenkit.score", f"--model={MODEL}", f"--tokenizer={SPEC}",
                   f"--text_file={text_file}", "--gin_param=score.max_length=128",
                   f"--workdir={tmp_path / 'out'}")
    got = [json.loads(l) for l in (tmp_path / "out" / score.OUTPUT_FILE).read_text().splitlines()]
    want = score.score(model=str(MODEL), tokenizer=SPEC, text_file=str(text_file), max_length=128)
    assert len(got) == len(want) == len(lines)
    for g, w in zip(got, want):
        assert (g["n_tokens"], g["n_bytes"]) == (w["n_tokens"], w["n_bytes"])
        assert g["loglik"] == pytest.approx(w["loglik"], rel=1e-5, abs=1e-4)


def _metrics(results: dict) -> dict:
    return {task: {k: v for k, v in values.items() if "stderr" not in k}
            for task, values in results["results"].items()}


def test_eval_gives_the_one_process_results(tmp_path):
    bindings = [f"eval.model = '{MODEL}'", f"eval.tokenizer = '{SPEC}'", "eval.limit = 3",
                "eval.bootstrap_iters = 0"]
    _two_processes(tmp_path, "tokenkit.eval", "--gin_file=gin/eval/tiny_world.gin", *[f"--gin_param={b}" for b in bindings],
                   f"--workdir={tmp_path / 'out'}")
    got = json.loads((tmp_path / "out" / harness.RESULTS_FILE).read_text())
    entry.parse_gin(["gin/eval/tiny_world.gin"], bindings, finalize=False)
    want = harness.evaluate()
    assert _metrics(got) == _metrics(want)


def test_eval_lockstep_gives_the_one_process_results(tmp_path):
    files = ["gin/ensembles/tiny_world.gin", "gin/eval/tiny_world.gin"]
    bindings = ["eval_lockstep.limit = 3", "eval_lockstep.bootstrap_iters = 0"]
    _two_processes(tmp_path, "tokenkit.eval_lockstep", *[f"--gin_file={f}" for f in files],
                   *[f"--gin_param={b}" for b in bindings], f"--workdir={tmp_path / 'out'}")
    got = json.loads((tmp_path / "out" / harness.RESULTS_FILE).read_text())
    entry.parse_gin(files, bindings, finalize=False)
    want = harness.evaluate_lockstep()
    assert _metrics(got) == _metrics(want)
