"""`tokens_to_add` (the upstream's option): tokens added to a target tokenizer, their rows
initialised by the transfer's init, through `transfer.add_tokens`, `build_run` and `zett`.

The case of the upstream's maths experiment, on the tiny world: Llama 3's header tokens
added to a Gemma 2 (SentencePiece) student's own tokenizer, distilled from a Llama 3
teacher whose data carries the Llama 3 template inline.
"""

from __future__ import annotations

import json
from pathlib import Path

import gin
import jax
import numpy as np
import pytest

from tokenkit import align, zett
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.data import encoding
from tokenkit.models import fvt, load_pretrained, make_mesh
from tokenkit.models import transfer as transfer_lib
from tokenkit.training import setup

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "data" / "models" / "tiny_teacher"
LLAMA3 = f"{TEACHER}:source=Llama3"
GEMMA2 = f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2"
# The upstream's configs/math_cross_tokenizer_distill.yaml adds these to Gemma 2.
HEADER_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
CHAT = ("<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>")


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def gemma():
    return load_byteify_tokenizer(GEMMA2)


@pytest.fixture(scope="module")
def gemma_model(tmp_path_factory):
    """The tiny teacher moved to gemma2_sp by FVT: a model whose own tokenizer is Gemma 2's."""
    out = tmp_path_factory.mktemp("gemma_model")
    zett.zett(out, model=str(TEACHER), tokenizer=LLAMA3, target_tokenizer=GEMMA2)
    return out


def test_add_tokens_returns_an_extended_copy(gemma):
    extended = transfer_lib.add_tokens(gemma, HEADER_TOKENS)
    assert len(gemma) == 4000 and len(extended) == 4005
    assert extended.convert_tokens_to_ids(HEADER_TOKENS) == list(range(4000, 4005))
    assert transfer_lib.extended_prefix(gemma, extended) == 4000
    assert transfer_lib.extended_prefix(extended, gemma) == 0
    # Text holding them is encoded with one id each; the original still spells them out.
    assert extended.tokenize(CHAT)[:3] == ["<|start_header_id|>", "user", "<|end_header_id|>"]
    assert gemma.tokenize(CHAT)[:3] == ["<", "|", "start"]
    # Regular tokens, as the upstream adds them: not the family's special tokens.
    assert set(extended.all_special_tokens) == set(gemma.all_special_tokens)
    again = transfer_lib.add_tokens(extended, ["<|eot_id|>"])  # known already: same id
    assert len(again) == 4005


@pytest.mark.parametrize("tokens, message", [
    ("<|eot_id|>", "must be a list of tokens"),
    (["<|eot_id|>", ""], "not non-empty strings"),
])
def test_add_tokens_refuses_bad_lists(gemma, tokens, message):
    with pytest.raises(ValueError, match=message):
        transfer_lib.add_tokens(gemma, tokens)


def test_an_extended_target_keeps_every_old_row_and_initialises_the_new(gemma, gemma_model):
    config, params = load_pretrained(gemma_model)
    extended = transfer_lib.add_tokens(gemma, HEADER_TOKENS)
    result = transfer_lib.transfer(config, params, gemma, extended, seed=0)
    old = np.asarray(params["embedder"]["embedding"])
    new = np.asarray(result.params["embedder"]["embedding"])
    assert result.config.vocab_size == 4032  # 4005 padded to a multiple of 64
    # Every old id keeps its own row, byte-fallback pieces included (FVT alone would
    # give `<0x41>` the row of `A`, the id its spelling converts back to).
    np.testing.assert_array_equal(new[:4000], old[:4000])
    # A new token is the mean of the rows of its Gemma pieces (FVT's averaged kind).
    pieces = gemma.convert_tokens_to_ids(gemma.backend_tokenize("<|start_header_id|>"))
    assert len(pieces) > 3
    np.testing.assert_allclose(new[4000], old[pieces].mean(0), rtol=0, atol=1e-7)
    assert not new[4005:].any()
    # With the same spec and size there is nothing to do (no stats, rows shared).
    assert transfer_lib.transfer(config, params, gemma, gemma).stats is None


def test_cross_tokenizer_target_copies_exact_matches_from_the_source(gemma):
    """Moved from Llama 3, the added header tokens the tiny Llama 3 vocabulary has are
    exact matches of its own tokens; the two it lacks are averaged from its pieces."""
    config, params = load_pretrained(TEACHER)
    llama = load_byteify_tokenizer(LLAMA3)
    result = transfer_lib.transfer(config, params, llama, transfer_lib.add_tokens(gemma, HEADER_TOKENS))
    plain = fvt.fvt(llama, gemma, np.asarray(params["embedder"]["embedding"]), seed=0).stats
    assert (result.stats.exact, result.stats.averaged) == (plain.exact + 3, plain.averaged + 2)
    new = np.asarray(result.params["embedder"]["embedding"])
    old = np.asarray(params["embedder"]["embedding"])
    known = HEADER_TOKENS[:3]
    np.testing.assert_array_equal(new[4000:4003], old[llama.convert_tokens_to_ids(known)])


def test_build_run_binding_and_alignment_with_a_llama3_teacher(gemma_model):
    gin.parse_config([
        f"build_run.student_model = '{gemma_model}'",
        f"build_run.student_tokenizer = '{GEMMA2}'",
        f"build_run.target_tokenizer = '{GEMMA2}'",
        f"build_run.teacher_model = '{TEACHER}'",
        f"build_run.teacher_tokenizer = '{LLAMA3}'",
        f"build_run.tokens_to_add = {HEADER_TOKENS!r}",
        "build_run.dtype = 'float32'",
    ])
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    run = setup.build_run(mesh, ("sft", "alm_unconstrained"), 0)
    student = run.student.tokenizer
    assert len(student) == 4005 and run.student.config.vocab_size == 4032
    assert run.transfer_stats is not None and run.transfer_stats.total == 4005
    emb = np.asarray(run.trainable["student"]["embedder"]["embedding"])
    _, original = load_pretrained(gemma_model)
    np.testing.assert_array_equal(emb[:4000], np.asarray(original["embedder"]["embedding"])[:4000])

    # The teacher's header tokens (its template's special tokens, inline in the text)
    # align one to one with the student's added tokens.
    teacher_ids = encoding.SideEncoder(run.teacher.tokenizer, 64).encode({"text": CHAT}).ids
    student_ids = encoding.SideEncoder(student, 64).encode({"text": CHAT}).ids
    t_tokens = run.teacher.tokenizer.convert_ids_to_tokens(teacher_ids)
    s_tokens = student.convert_ids_to_tokens(student_ids)
    assert s_tokens.count("<|start_header_id|>") == t_tokens.count("<|start_header_id|>") == 2
    spans = align.get_alignment_indices(t_tokens, s_tokens, run.teacher.tokenizer, student)[0]
    one_to_one = {(t_tokens[a], s_tokens[c]) for a, b, c, d in spans if b - a == 1 and d - c == 1}
    assert {(t, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")} <= one_to_one


def test_zett_adds_tokens_and_names_its_init(gemma_model, tmp_path, capsys):
    out = tmp_path / "out"
    summary = zett.zett(out, model=str(gemma_model), tokenizer=GEMMA2, target_tokenizer=GEMMA2,
                        tokens_to_add=HEADER_TOKENS, init="omp")
    printed = capsys.readouterr().out
    assert printed.startswith("OMP ") and "(+5 added tokens)" in printed and "FVT" not in printed
    record = zett.read_stats(out)
    assert record["init"] == "omp" == summary["init"] and record["stats"]["total"] == 4005
    assert not (out / zett.LEGACY_STATS_FILE).exists()
    saved = load_byteify_tokenizer((out / zett.SPEC_FILE).read_text().strip())
    assert len(saved) == 4005 and saved.tokenize(CHAT)[:3] == ["<|start_header_id|>", "user", "<|end_header_id|>"]


def test_read_stats_reads_the_old_name(tmp_path):
    (tmp_path / zett.LEGACY_STATS_FILE).write_text(json.dumps({"stats": {"special": 5}}))
    assert zett.read_stats(tmp_path) == {"init": "fvt", "stats": {"special": 5}}
    with pytest.raises(FileNotFoundError, match="transfer_stats.json"):
        zett.read_stats(tmp_path / "nothing")
