"""OMP initialisation: the batched pursuit against a plain reference, planted codes, the
donor and donor-free settings on the tiny-world tokenizers, slot and exact copies,
untied outputs, determinism, bad input, and `transfer(init="omp")` end to end."""

from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.evaluation.model import EvalModel
from tokenkit.evaluation.scoring import score_texts
from tokenkit.models import fvt, load_pretrained, omp
from tokenkit.models.transfer import INIT_METHODS, transfer

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "data" / "models"
SPECS = {
    "llama3": f"{MODELS}/tiny_teacher:source=Llama3",
    "gemma2": f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2",
    "qwen2": f"{REPO}/data/tokenizers/qwen2_bpe:source=Qwen2",
    "qwen2_model": f"{MODELS}/tiny_teacher_qwen2:source=Qwen2",
}
D = 8


@pytest.fixture(scope="module")
def toks():
    return {k: load_byteify_tokenizer(v) for k, v in SPECS.items()}


def _normal(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _reference_omp(dictionary: np.ndarray, target: np.ndarray, k: int) -> dict[int, float]:
    """Textbook OMP, one target at a time: greedy on unit rows, least squares refit."""
    unit = dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)
    chosen: list[int] = []
    residual = target.astype(np.float64)
    coef = np.zeros(0)
    for _ in range(k):
        scores = np.abs(unit @ residual)
        scores[chosen] = -1
        chosen.append(int(np.argmax(scores)))
        basis = dictionary[chosen].T.astype(np.float64)
        coef = np.linalg.lstsq(basis, target, rcond=None)[0]
        residual = target - basis @ coef
    return dict(zip(chosen, coef))


def _as_dicts(codes: omp.SparseCodes) -> list[dict[int, float]]:
    return [
        {int(i): float(c) for i, c in zip(row_i, row_c) if i >= 0}
        for row_i, row_c in zip(codes.indices, codes.coefficients)
    ]


# ------------------------------------------------------------------ the pursuit itself


def test_planted_sparse_combinations_are_recovered_exactly():
    rng = np.random.default_rng(1)
    # Incoherent enough (64 dimensions, at most 5 of 300 rows) for OMP to find each code.
    dictionary = _normal((300, 64)) * rng.uniform(0.3, 3.0, size=(300, 1)).astype(np.float32)
    planted = []
    targets = np.zeros((37, 64), np.float32)
    for t in range(37):
        rows = rng.choice(300, size=int(rng.integers(1, 6)), replace=False)
        weights = rng.normal(size=len(rows))
        targets[t] = weights @ dictionary[rows]
        planted.append(dict(zip(rows.tolist(), weights.tolist())))
    # batch_size 8 splits the targets unevenly: the last batch is padded.
    codes = omp.batched_omp(dictionary, targets, k=12, candidates=None, batch_size=8)
    for got, want in zip(_as_dicts(codes), planted):
        assert set(got) == set(want)  # stops once exact: no extra atoms
        for row, weight in want.items():
            assert got[row] == pytest.approx(weight, abs=1e-4)
    np.testing.assert_allclose(codes.reconstruct(dictionary), targets, atol=1e-4)


def test_batched_pursuit_equals_the_reference():
    dictionary = _normal((120, 16), seed=2)
    targets = _normal((9, 16), seed=3)
    codes = omp.batched_omp(dictionary, targets, k=10, candidates=None)
    assert (codes.sizes == 10).all()
    for got, target in zip(_as_dicts(codes), targets):
        want = _reference_omp(dictionary, target, 10)
        assert set(got) == set(want)
        for row in want:
            assert got[row] == pytest.approx(want[row], abs=1e-4)


def test_candidates_restrict_the_choice():
    dictionary = _normal((200, 16), seed=4)
    targets = _normal((6, 16), seed=5)
    codes = omp.batched_omp(dictionary, targets, k=5, candidates=20)
    top = np.argsort(-np.abs((dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)) @ targets.T), axis=0)[:20]
    for t, got in enumerate(_as_dicts(codes)):
        assert len(got) == 5 and set(got) <= set(top[:, t].tolist())


def test_zero_targets_and_zero_rows_get_no_atoms():
    dictionary = np.concatenate([np.zeros((1, 4), np.float32), np.eye(4, dtype=np.float32)])
    targets = np.array([[0, 0, 0, 0], [0, 2, 0, 0]], np.float32)
    codes = omp.batched_omp(dictionary, targets, k=3, candidates=None)
    assert _as_dicts(codes) == [{}, {2: pytest.approx(2.0)}]


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=0), "k >= 1"),
    (dict(k=4, candidates=0), "candidates >= 1"),
])
def test_bad_sparsity(kwargs, message):
    with pytest.raises(ValueError, match=message):
        omp.batched_omp(_normal((5, 3)), _normal((2, 3)), **kwargs)
    with pytest.raises(ValueError, match=message):
        omp.OmpOptions(k=kwargs["k"], candidates=kwargs.get("candidates"))


def test_bad_shapes():
    with pytest.raises(ValueError, match="dictionary"):
        omp.batched_omp(_normal((5, 3)), _normal((2, 4)), k=2)
    with pytest.raises(ValueError, match="at least one dictionary row"):
        omp.batched_omp(np.zeros((0, 3), np.float32), _normal((2, 3)), k=2)


# ------------------------------------------------------------- on the tiny tokenizers


@pytest.fixture(scope="module")
def llama_to_gemma(toks):
    source = _normal((len(toks["llama3"]), D))
    mapping = fvt.fvt_mapping(toks["llama3"], toks["gemma2"], len(source), show_progress=False)
    result = omp.omp(toks["llama3"], toks["gemma2"], source, k=16, seed=0, show_progress=False)
    return source, mapping, result


def test_donor_free_stats_and_fvt_rows(llama_to_gemma, toks):
    source, mapping, result = llama_to_gemma
    stats = result.stats
    assert stats.total == len(toks["gemma2"]) == 4000
    assert (stats.special, stats.exact, stats.fallback) == (5, 1949, 0)
    # 1,209 of FVT's 2,046 averaged tokens have a piece the target vocabulary lacks:
    # those are pursued, the rest keep FVT's mean (their exact code).
    assert (stats.omp, stats.averaged) == (1209, 837)
    assert str(stats).startswith("special=5 exact=1949 omp=1209 averaged=837 fallback=0")
    fvt_rows = mapping.apply(source, np.random.default_rng(0))
    anchor_rows = np.zeros(len(source), bool)
    anchor_rows[mapping.copy_from[mapping.copy_from >= 0]] = True
    only_anchors = mapping.average[:, ~anchor_rows].getnnz(axis=1) == 0
    keeps = (mapping.copy_from >= 0) | only_anchors
    np.testing.assert_array_equal(result.input_embeddings[keeps], fvt_rows[keeps])
    # The pursued tokens re-express FVT's mean with shared tokens: close, not equal.
    pursued = ~keeps
    assert pursued.sum() == 1209
    err = np.linalg.norm(result.input_embeddings[pursued] - fvt_rows[pursued], axis=1)
    assert 0 < err.mean() < 0.5 * np.linalg.norm(fvt_rows[pursued], axis=1).mean()


def test_special_slots_and_exact_tokens_copy_rows(llama_to_gemma, toks):
    source, _, result = llama_to_gemma
    llama, gemma = toks["llama3"], toks["gemma2"]
    for gemma_token, llama_token in [
        ("<bos>", "<|begin_of_text|>"), ("<start_of_turn>", "<|start_header_id|>"),
        ("<end_of_turn>", "<|eot_id|>"), ("<eos>", "<|eot_id|>"), ("<pad>", "<|end_of_text|>"),
    ]:
        np.testing.assert_array_equal(
            result.input_embeddings[gemma.convert_tokens_to_ids(gemma_token)],
            source[llama.convert_tokens_to_ids(llama_token)], err_msg=gemma_token,
        )
    llama_vocab = llama.get_vocab()
    shared = [t for t in gemma.get_vocab() if t in llama_vocab and not t.startswith("<")]
    assert len(shared) > 1800
    for token in shared:
        np.testing.assert_array_equal(
            result.input_embeddings[gemma.convert_tokens_to_ids(token)], source[llama_vocab[token]]
        )


def _planted_donor(toks, source: np.ndarray, width: int, seed: int):
    """A donor for llama3 -> gemma2 whose anchors are a linear image of the base rows and
    whose new tokens are planted sparse combinations of anchors; returns the donor and
    the base-space rows the planted codes imply."""
    llama, gemma = toks["llama3"], toks["gemma2"]
    mapping = fvt.fvt_mapping(llama, gemma, len(source), show_progress=False)
    special = omp._special_ids(llama, gemma, "special")
    anchors = np.array([i for i in np.flatnonzero(mapping.copy_from >= 0) if i not in special])
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(D, width)).astype(np.float32)
    donor = rng.normal(size=(len(gemma), width)).astype(np.float32)
    donor[anchors] = source[mapping.copy_from[anchors]] @ projection
    expected = {}
    for token in np.flatnonzero(mapping.copy_from < 0)[:40]:
        rows = rng.choice(len(anchors), size=3, replace=False)
        weights = rng.normal(size=3).astype(np.float32)
        donor[token] = weights @ donor[anchors[rows]]
        expected[int(token)] = weights @ source[mapping.copy_from[anchors[rows]]]
    return donor, expected, mapping


def test_a_donor_codes_carry_over_to_the_base_rows(toks):
    # Width D: the anchors' donor rows span only D dimensions, so a planted 3-atom code
    # is the sparsest but not the only one; the base rows it implies are what must match.
    source = _normal((len(toks["llama3"]), D), seed=6)
    donor, expected, mapping = _planted_donor(toks, source, width=48, seed=7)
    result = omp.omp(toks["llama3"], toks["gemma2"], source, donor_embeddings=donor, k=8,
                     show_progress=False)
    # Every token the donor knows is pursued, including FVT's would-be averaged ones.
    assert result.stats.omp == int((mapping.copy_from < 0).sum()) == 2046
    assert result.stats.averaged == result.stats.fallback == 0
    for token, row in expected.items():
        np.testing.assert_allclose(result.input_embeddings[token], row, atol=1e-3, err_msg=str(token))


def test_untied_outputs_share_codes_unless_the_donor_has_its_own(toks):
    llama, gemma = toks["llama3"], toks["gemma2"]
    source = _normal((len(llama), D), seed=8)
    outputs = _normal((len(llama), D), seed=9)
    donor, expected, _ = _planted_donor(toks, source, width=48, seed=10)
    shared = omp.omp(llama, gemma, source, output_embeddings=outputs, donor_embeddings=donor,
                     k=8, show_progress=False)
    # Same codes: the output rows are the same combinations of the output matrix's rows.
    again = omp.omp(llama, gemma, outputs, donor_embeddings=donor, k=8, show_progress=False)
    np.testing.assert_allclose(shared.output_embeddings, again.input_embeddings, atol=1e-6)
    # A donor output matrix is fitted on its own: planted codes over its rows.
    donor_out, expected_out, _ = _planted_donor(toks, outputs, width=48, seed=11)
    separate = omp.omp(llama, gemma, source, output_embeddings=outputs, donor_embeddings=donor,
                       donor_output_embeddings=donor_out, k=8, show_progress=False)
    np.testing.assert_array_equal(separate.input_embeddings, shared.input_embeddings)
    for token, row in expected_out.items():
        np.testing.assert_allclose(separate.output_embeddings[token], row, atol=1e-3)


def test_deterministic(toks):
    source = _normal((len(toks["llama3"]), D), seed=12)
    runs = [omp.omp(toks["llama3"], toks["gemma2"], source, k=16, seed=5, show_progress=False)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].input_embeddings, runs[1].input_embeddings)
    assert runs[0].stats == runs[1].stats


def test_bad_input(toks):
    llama, gemma = toks["llama3"], toks["gemma2"]
    source = _normal((len(llama), D))
    with pytest.raises(ValueError, match="k >= 1"):
        omp.omp(llama, gemma, source, k=0, show_progress=False)
    with pytest.raises(ValueError, match="there are none"):
        omp.omp(llama, gemma, source, allow_exact_match=False, show_progress=False)
    with pytest.raises(ValueError, match="one row per target token"):
        omp.omp(llama, gemma, source, donor_embeddings=_normal((10, 4)), show_progress=False)
    with pytest.raises(ValueError, match="needs donor_embeddings and output_embeddings"):
        omp.omp(llama, gemma, source, donor_output_embeddings=_normal((len(gemma), 4)),
                show_progress=False)


# -------------------------------------------------------------- transfer, end to end


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("target, stats", [
    ("gemma2", dict(special=5, exact=1949, omp=1209, averaged=837, fallback=0)),
    ("qwen2", dict(special=3, exact=2997, omp=0, averaged=0, fallback=0)),
])
def test_transfer_with_omp(toks, target, stats, clean_gin):
    assert "omp" in INIT_METHODS
    config, params = load_pretrained(MODELS / "tiny_teacher")
    result = transfer(config, params, toks["llama3"], toks[target], init="omp")
    assert result.stats.as_dict() == {**stats, "total": len(toks[target])}
    model = EvalModel.build(result.config, result.params, toks[target])
    (score,) = score_texts(model, ["The river runs past the old mill."], show_progress=False)
    assert np.isfinite(score.loglik) and score.n_tokens > 3


def test_transfer_with_a_donor_model_bound_in_gin(toks, clean_gin):
    # The paper's setting on the tiny world: the Qwen2-tokenizer model moves to Llama 3's
    # tokenizer, with the Llama 3-tokenizer teacher as the donor.
    gin.parse_config([f"OmpOptions.donor_model = '{MODELS / 'tiny_teacher'}'", "OmpOptions.k = 8"])
    config, params = load_pretrained(MODELS / "tiny_teacher_qwen2")
    source, target = toks["qwen2_model"], toks["llama3"]
    result = transfer(config, params, source, target, init="omp")
    assert result.stats.as_dict() == dict(special=4, exact=2997, omp=1095, averaged=0, fallback=0,
                                          total=4096)
    plain = transfer(config, params, source, target, init="fvt")
    new = np.asarray(result.params["embedder"]["embedding"])
    old = np.asarray(plain.params["embedder"]["embedding"])
    mapping = fvt.fvt_mapping(source, target, len(source), show_progress=False)
    copied = np.flatnonzero(mapping.copy_from >= 0)
    np.testing.assert_array_equal(new[copied], old[copied])
    pursued = np.flatnonzero(mapping.copy_from < 0)
    assert np.abs(new[pursued] - old[pursued]).max() > 0.1
