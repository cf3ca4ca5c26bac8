"""The losses on chunk ids from real alignments of the tiny world's tokenizers.

Teacher `llama3_bpe`, student `gemma2_sp` (subword) or its byte conversion; chunk ids
from `tokenkit.align.Aligner` (with the committed bias matrices for `unbiased`), the
MinED mapping from `data/tokenizer_pairs/`. Each loss must equal its dense formulation.
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import DATA_DIR
from tests.losses import dense_reference as dense
from tokenkit import align, tokenizer_info
from tokenkit.byteify import load_byteify_tokenizer
from tests.losses.support import as_batch, masked_outputs
from tokenkit.logits import vocab_mask
from tokenkit.losses import AlmOptions, LossContext, TokenizerConstants, build_space_mask
from tokenkit.losses.alm import alm_loss
from tokenkit.losses.mined import baseline_mined_loss

PAIR = DATA_DIR / "tokenizer_pairs" / "llama3_bpe__gemma2_sp"
PAD_TO = 64


def _texts(n: int) -> list[str]:
    texts = []
    with open(DATA_DIR / "corpus" / "validation.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if "text" in record:
                texts.append(record["text"][:200])
            elif len(texts) % 2:  # a few chats too: their template tokens align as slots
                texts.append(" ".join(m["content"] for m in record["messages"]))
            if len(texts) == n:
                return texts
    raise AssertionError("not enough texts in the corpus")


def _encode(tokenizer, texts, length):
    bos = tokenizer.family.slot("bos")
    prefix = [] if bos is None else tokenizer.convert_tokens_to_ids(list(bos))
    ids = np.zeros((len(texts), length), np.int32)
    mask = np.zeros((len(texts), length), bool)
    for i, text in enumerate(texts):
        row = (prefix + tokenizer.encode(text, add_special_tokens=False))[:length]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask


def _constants(tokenizer):
    n = len(tokenizer)
    padded = -(-n // PAD_TO) * PAD_TO
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    space = build_space_mask(tokens, tokenizer.all_special_ids, padded_size=padded)
    eos = tokenizer.family.slot("eos")
    eos_id = tokenizer.convert_tokens_to_ids(list(eos))[-1] if eos else 0
    return TokenizerConstants(jnp.asarray(space), jnp.asarray(vocab_mask(n, padded)), eos_id), padded


@pytest.fixture(scope="module")
def build(tiny_tokenizer_specs):
    """`build(kind)` -> (context, chunkings) for the `subword` or `bytes` student, cached."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _build(tiny_tokenizer_specs, kind)
        return cache[kind]

    return get


@pytest.fixture(params=["subword", "bytes"])
def setup(request, build):
    return build(request.param)


def _build(tiny_tokenizer_specs, kind):
    teacher_tok = load_byteify_tokenizer(tiny_tokenizer_specs["llama3_bpe"])
    student_spec = tiny_tokenizer_specs["gemma2_sp"] + (":conversion=byte" if kind == "bytes" else "")
    student_tok = load_byteify_tokenizer(student_spec)
    texts = _texts(4)
    len_t, len_s = (48, 64) if kind == "subword" else (48, 160)
    ids_t, mask_t = _encode(teacher_tok, texts, len_t)
    ids_s, mask_s = _encode(student_tok, texts, len_s)
    kinds = ("unconstrained", "space")
    bias = mapping = None
    if kind == "subword":  # the committed pair data is for the subword student
        pair = tokenizer_info.load_pair_data(PAIR, teacher_tok, student_tok)
        kinds += ("unbiased",)
        bias, mapping = (pair.bias1, pair.bias2), jnp.asarray(pair.mined_mapping)
    aligner = align.Aligner(teacher_tok, student_tok, bias_matrices=bias, bias_threshold=1e-4)
    chunkings = aligner.chunk_ids(ids_t, ids_s, mask_t, mask_s, kinds=kinds)
    batch = {
        "input_ids_teacher": ids_t, "attention_mask_teacher": mask_t, "loss_mask_teacher": mask_t,
        "input_ids_student": ids_s, "attention_mask_student": mask_s, "loss_mask_student": mask_s,
    }
    for kind, chunking in chunkings.items():
        batch[f"chunks_teacher_{kind}"] = chunking.chunks_a
        batch[f"chunks_student_{kind}"] = chunking.chunks_b
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    t_const, t_vocab = _constants(teacher_tok)
    s_const, s_vocab = _constants(student_tok)
    rng = np.random.default_rng(0)
    t_logits = jnp.asarray(rng.normal(size=(len(texts), len_t, t_vocab)) * 3, jnp.float32)
    s_logits = jnp.asarray(rng.normal(size=(len(texts), len_s, s_vocab)) * 3, jnp.float32)
    ctx = LossContext(
        as_batch(batch), masked_outputs(s_logits, s_const), s_const, masked_outputs(t_logits, t_const),
        t_const, mined_mapping=mapping,
    )
    return ctx, kinds, batch


@pytest.mark.parametrize(
    "options",
    [AlmOptions(), AlmOptions(alm_mode="append_space", alm_diff_fn="abs"), AlmOptions(alm_mode="eos_as_space+append_space")],
    ids=["default", "append_abs", "eos"],
)
def test_alm_equals_dense_on_real_chunk_ids(setup, options):
    ctx, kinds, batch = setup
    assert int(jnp.sum(batch["chunks_teacher_unconstrained"] >= 0)) > 20
    for kind in kinds:
        ours, _ = alm_loss(ctx, kind, options)
        ref, _ = dense.alm_dense(
            batch, ctx.student.logits, ctx.teacher.logits, chunking=kind,
            student_vocab_mask=ctx.student_constants.vocab_mask,
            teacher_vocab_mask=ctx.teacher_constants.vocab_mask,
            student_space_mask=ctx.student_constants.space_mask,
            teacher_space_mask=ctx.teacher_constants.space_mask,
            student_eos=ctx.student_constants.eos_token_id, teacher_eos=ctx.teacher_constants.eos_token_id,
            **dataclasses.asdict(options),
        )
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_mined_equals_dense_with_the_committed_mapping(build):
    ctx, _, batch = build("subword")
    ours, diag = baseline_mined_loss(ctx)
    ref = dense.mined_dense(
        batch, ctx.student.logits, ctx.teacher.logits, ctx.mined_mapping,
        ctx.student_constants.vocab_mask, ctx.teacher_constants.vocab_mask,
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert float(diag["mined_one_to_one_mask_sum"]) > 0


def test_the_upstream_counts_merged_chunks_twice(build):
    """The upstream's `merge_by_space_prob` denominator merges the aligned counts a second
    time; with a trained teacher's space probabilities on real tiny-world batches that
    undercounts the chunks the loss sums over, so its loss is larger than ours even with
    one micro-batch. Ours counts each merged chunk once (docs/losses.md, "Where we
    differ")."""
    import jax

    from tokenkit.models import load_pretrained
    from tokenkit.models.side import ModelSide

    ctx, _, batch = build("subword")
    config, params = load_pretrained(DATA_DIR / "models" / "tiny_teacher")
    teacher = ModelSide.create(config, load_byteify_tokenizer(f"{DATA_DIR}/models/tiny_teacher:source=Llama3"))
    t_logits = teacher.forward(params, batch["input_ids_teacher"], batch["attention_mask_teacher"]).logits
    ctx = dataclasses.replace(ctx, teacher=dataclasses.replace(ctx.teacher, logits=t_logits))
    options = dict(alm_mode="merge_by_space_prob+append_space", chunking="unconstrained",
                   student_vocab_mask=ctx.student_constants.vocab_mask,
                   teacher_vocab_mask=ctx.teacher_constants.vocab_mask,
                   student_space_mask=ctx.student_constants.space_mask,
                   teacher_space_mask=ctx.teacher_constants.space_mask)
    ours, diagnostics = alm_loss(ctx, "unconstrained", AlmOptions())
    once, _ = dense.alm_dense(batch, ctx.student.logits, t_logits, **options)
    twice, _ = dense.alm_dense(batch, ctx.student.logits, t_logits, upstream_double_merge=True, **options)
    np.testing.assert_allclose(ours, once, rtol=1e-5)
    # The trained teacher merges chunks (else the two would agree).
    assert float(diagnostics["teacher_avg_chunk_lengths_after_merge"]) > float(
        diagnostics["teacher_avg_chunk_lengths"])
    ratio = float(twice) / float(once)
    print(f"upstream / ours = {ratio:.2f}")
    assert ratio > 1.15, ratio
