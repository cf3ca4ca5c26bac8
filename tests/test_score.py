"""`python -m tokenkit.score`: one JSON line per input line, equal to the library's scores."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit import byteify
from tokenkit import score as score_lib
from tokenkit.evaluation import scoring
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import expand, load_pretrained, make_transformer, save_pretrained
from tokenkit.models.config import ModelConfig
from tokenkit.models.transformer import init_params

REPO = Path(__file__).resolve().parent.parent
LINES = ["The river runs past the mill.", "", "Die Straße ist lang. 数字 12 🙂", "x"]


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _save_model(path: Path, vocab_size: int, seed: int) -> Path:
    config = ModelConfig(architecture="llama", vocab_size=vocab_size, hidden_size=16,
                         intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=4, max_position_embeddings=256, tie_word_embeddings=True)
    params = init_params(make_transformer(config), seed)
    params["embedder"]["embedding"] = params["embedder"]["embedding"] * 50
    save_pretrained(path, config, params)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_specs):
    root = tmp_path_factory.mktemp("score")
    text_file = root / "lines.txt"
    text_file.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return {
        "root": root,
        "text_file": text_file,
        "llama": _save_model(root / "llama", 4160, seed=0),
        "bytes": _save_model(root / "bytes", 320, seed=1),
        "spec": tiny_tokenizer_specs["llama3_bpe"],
        "byte_spec": tiny_tokenizer_specs["llama3_bpe"] + ":conversion=byte",
    }


def _library_scores(model_dir, spec, texts, expansion=None, expand_dir=None, buckets=None):
    config, params = load_pretrained(model_dir)
    if expansion is not None:
        _, old = load_pretrained(expand_dir)
        params["expand_embedder"] = {"embedding": jnp.asarray(
            expansion.embedding_table(old["embedder"]["embedding"]))}
    model = EvalModel.build(config, params, byteify.load_byteify_tokenizer(spec), expansion=expansion)
    return scoring.score_texts(model, texts, tokens_per_batch=3 * 32, buckets=buckets,
                               show_progress=False)


def test_one_json_line_per_input_line_on_stdout(setup, capsys):
    records = score_lib.score(model=str(setup["llama"]), tokenizer=setup["spec"],
                              text_file=str(setup["text_file"]))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == records and len(records) == len(LINES)
    want = _library_scores(setup["llama"], setup["spec"], LINES)
    for text, record, expected in zip(LINES, records, want):
        assert set(record) == {"loglik", "n_tokens", "n_bytes", "bits_per_byte"}
        assert record["n_bytes"] == len(text.encode("utf-8"))
        assert record["n_tokens"] == expected.n_tokens
        assert record["loglik"] == pytest.approx(expected.loglik, rel=1e-5, abs=1e-4)
        if text:
            assert record["bits_per_byte"] == pytest.approx(
                -record["loglik"] / math.log(2) / record["n_bytes"])
        else:
            assert record["bits_per_byte"] is None and record["n_tokens"] == 0


def test_workdir_gets_scores_jsonl(setup, tmp_path, capsys):
    records = score_lib.score(tmp_path, model=str(setup["llama"]), tokenizer=setup["spec"],
                              text_file=str(setup["text_file"]), add_bos=False, max_length=8)
    assert capsys.readouterr().out == ""
    written = [json.loads(line) for line in (tmp_path / score_lib.OUTPUT_FILE).read_text().splitlines()]
    assert written == records and len(written) == len(LINES)
    assert records[0]["n_tokens"] == len(byteify.load_byteify_tokenizer(setup["spec"]).encode(
        LINES[0], add_special_tokens=False)) - 1


def test_byte_level_model_with_expansion(setup):
    kwargs = dict(model=str(setup["bytes"]), tokenizer=setup["byte_spec"],
                  text_file=str(setup["text_file"]), buckets=(64,))  # one compilation
    expanded = score_lib.score(expand_model=str(setup["llama"]), expand_tokenizer=setup["spec"], **kwargs)
    expansion = expand.build_expansion(byteify.load_byteify_tokenizer(setup["byte_spec"]),
                                       byteify.load_byteify_tokenizer(setup["spec"]))
    want = _library_scores(setup["bytes"], setup["byte_spec"], LINES, expansion, setup["llama"],
                           buckets=(16, 32, 48))
    # (That the expansion changes the scores is checked in tests/evaluation/test_scoring.py.)
    for record, expected in zip(expanded, want):
        assert record["n_tokens"] == record["n_bytes"] == expected.n_tokens  # bos + bytes - 1
        assert record["loglik"] == pytest.approx(expected.loglik, rel=1e-5, abs=1e-4)


def test_bad_input(setup, tmp_path):
    base = dict(tokenizer=setup["spec"], text_file=str(setup["text_file"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_lib.score(model=str(tmp_path / "missing_model"), **base)
    small = _save_model(tmp_path / "small", 1024, seed=0)
    with pytest.raises(ValueError, match="has 4096 ids but the model .* only 1024 embedding rows"):
        score_lib.score(model=str(small), **base)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        score_lib.score(model=str(setup["llama"]), tokenizer=setup["spec"],
                        text_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="go together"):
        score_lib.score(model=str(setup["llama"]), expand_model=str(setup["llama"]), **base)


def test_read_lines_keeps_everything_but_newlines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a\r\n\n  b \nlast".encode())
    assert score_lib.read_lines(path) == ["a\r", "", "  b ", "last"]


@pytest.mark.slow
def test_entrypoint_with_the_documented_flags(setup):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "tokenkit.score",
            f"--model={setup['llama']}",
            f"--tokenizer={setup['spec']}",
            f"--text_file={setup['text_file']}",
            "--gin_param=score.tokens_per_batch=64",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(LINES)
    want = _library_scores(setup["llama"], setup["spec"], LINES)
    np.testing.assert_allclose([r["loglik"] for r in records], [w.loglik for w in want], rtol=1e-5)
    assert "bits per byte" in result.stderr


def test_gin_param_form_and_override_of_a_shorthand(setup, tmp_path):
    # The shorthands are Gin bindings: the long form works, and an explicit
    # --gin_param given after them wins.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "tokenkit.score",
            "--model=/no/such/model",
            f"--gin_param=score.model=\"{setup['llama']}\"",
            f"--gin_param=score.tokenizer=\"{setup['spec']}\"",
            f"--gin_param=score.text_file=\"{setup['text_file']}\"",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == len(LINES)
    assert str(setup["llama"]) in (tmp_path / "operative_config.gin").read_text()
