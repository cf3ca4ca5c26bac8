"""Dense-matrix formulations of the losses, written independently of `tokenkit.losses`.

These follow the upstream's math: chunk ids become 0/1 alignment matrices `[B, L, C]`,
chunk log-likelihoods are matmuls, chunk ends come from the last True of each column,
merging by space probability is a `[B, C, C]` merging matrix, and normalisers are means
over the local batch divided by means over the global batch. They are quadratic in the
length and exist to check the segment-sum implementation (tests) and to be timed
against it (`tools/benchmarks/losses.py`).

Deliberate differences from the upstream code, shared with `tokenkit.losses` and listed
in docs/losses.md, are marked "(ours)".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LARGE_NEG = float(-0.7 * np.finfo(np.float32).max)
EPS = 1e-6


def alignment_matrix(chunk_ids, num_chunks, mask=None):
    """`bool[B, L, C]`: token l is in chunk c."""
    matrix = (chunk_ids[..., None] == jnp.arange(num_chunks)) & (chunk_ids[..., None] >= 0)
    if mask is not None:
        matrix = matrix & mask.astype(bool)[..., None]
    return matrix


def last_index_per_column(matrix):
    """Row index of the end of the first run of True in each column; (index, any)."""
    last_only = matrix.at[:, :-1].set(matrix[:, :-1] & ~matrix[:, 1:])
    return last_only.argmax(-2), last_only.max(-2) != 0


def logprobs_dense(logits, vocab_mask):
    logits = logits.astype(jnp.float32) + jnp.where(vocab_mask, 0.0, LARGE_NEG)
    logprobs = jnp.minimum(jax.nn.log_softmax(logits, -1), 0.0)
    return logits, logprobs, jnp.exp(logprobs)


def _log1mexp(x):
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def diff_dense(name, t, s, temp, alpha):
    if name == "abs":
        return jnp.abs(t - s)
    if name in ("binary_ce", "reverse_binary_kl", "abs_exp"):
        t, s = t / temp - EPS, s / temp - EPS
        if name == "binary_ce":
            return -(jnp.exp(t) * s - jnp.expm1(t) * _log1mexp(s))
        if name == "reverse_binary_kl":
            return jnp.exp(s) * (s - t) - jnp.expm1(s) * (_log1mexp(s) - _log1mexp(t))
        return jnp.abs(jnp.exp(t) - jnp.exp(s))
    if name == "binary_kl_temp_limit":
        t, s = t - EPS, s - EPS
        return (t - s) + t * (jnp.log(-s) - jnp.log(-t))
    if name == "renyi":
        t, s = t - EPS, s - EPS
        a = alpha
        return jnp.logaddexp(
            a * t + (1 - a) * s, a * jnp.log1p(-jnp.exp(t)) + (1 - a) * jnp.log1p(-jnp.exp(s))
        ) / (a - 1)
    r = (t - s) / temp
    if name == "joschu_k2":
        return r**2 / 2
    if name == "joschu_k3":
        return jnp.expm1(r) - r
    raise ValueError(name)


def alm_dense(
    batch,
    student_logits,
    teacher_logits,
    *,
    chunking,
    student_vocab_mask,
    teacher_vocab_mask,
    student_space_mask,
    teacher_space_mask,
    student_eos=-1,
    teacher_eos=-1,
    alm_mode="merge_by_space_prob+append_space",
    alm_diff_fn="binary_ce",
    binarization_temp=100.0,
    renyi_alpha=0.5,
    space_merge_threshold=0.1,
    space_mask_mode=None,  # the space masks are given directly
    distill_chunk_sizes=(1,),
    distill_main_path_numerator="chunk_count",
    distill_main_path_denominator="chunk_count",
    global_batch=None,
    upstream_double_merge=False,
):
    """The ALM loss and its diagnostics, dense; `global_batch` None = the batch itself.

    With `merge_by_space_prob`, the global chunk count is the merged count of this
    batch (one micro-batch = the step; ours estimates it for several micro-batches).
    `upstream_double_merge=True` reproduces the upstream's denominator instead: it
    applies the merging matrix to the already merged counts a second time
    (`global_aligned_count = aligned_count @ chunk_merging_matrix` after `aligned_count`
    was merged), which relabels merged chunks as if they were unmerged ones and so
    counts fewer chunks than the loss sums over.
    """
    global_batch = batch if global_batch is None else global_batch
    len_t = batch["input_ids_teacher"].shape[1]
    len_s = batch["input_ids_student"].shape[1]
    lcm = int(np.lcm.reduce(np.asarray(distill_chunk_sizes)))
    num_chunks = -(-min(len_t, len_s) // lcm) * lcm
    a = alignment_matrix(batch[f"chunks_student_{chunking}"], num_chunks, batch["loss_mask_student"])
    b = alignment_matrix(batch[f"chunks_teacher_{chunking}"], num_chunks, batch["loss_mask_teacher"])
    gb = alignment_matrix(
        global_batch[f"chunks_teacher_{chunking}"], num_chunks, global_batch["loss_mask_teacher"]
    )
    a_f, b_f = a.astype(jnp.float32), b.astype(jnp.float32)
    report = {}
    last_b, _ = last_index_per_column(b)
    last_a, _ = last_index_per_column(a)
    s_sums, t_sums = a_f.sum(-2), b_f.sum(-2)
    report["student_avg_chunk_lengths"] = s_sums.mean() / (s_sums > 0).mean()
    report["teacher_avg_chunk_lengths"] = t_sums.mean() / (t_sums > 0).mean()

    _, t_logprobs, t_probs = logprobs_dense(jax.lax.stop_gradient(teacher_logits), teacher_vocab_mask)
    _, s_logprobs, s_probs = logprobs_dense(student_logits, student_vocab_mask)
    t_main = jnp.take_along_axis(t_logprobs[:, :-1], batch["input_ids_teacher"][:, 1:, None], -1)[..., 0]
    s_main = jnp.take_along_axis(s_logprobs[:, :-1], batch["input_ids_student"][:, 1:, None], -1)[..., 0]
    t_logp = jnp.minimum(jnp.einsum("bl,blc->bc", t_main, b_f[:, 1:]), 0.0)
    s_logp = jnp.minimum(jnp.einsum("bl,blc->bc", s_main, a_f[:, 1:]), 0.0)
    if "eos_as_space" in alm_mode:
        t_space = t_logprobs[:, :, teacher_eos]
        s_space = s_logprobs[:, :, student_eos]
    else:
        t_space = jnp.minimum(jnp.log(t_probs @ teacher_space_mask.astype(jnp.float32)), 0.0)
        s_space = jnp.minimum(jnp.log(s_probs @ student_space_mask.astype(jnp.float32)), 0.0)
    t_space = jnp.take_along_axis(t_space, last_b, -1)
    s_space = jnp.take_along_axis(s_space, last_a, -1)
    count = b_f[:, 1:].sum(-2)
    global_count = gb.astype(jnp.float32)[:, 1:].sum(-2)

    if "merge_by_space_prob" in alm_mode:
        bsz, c = t_space.shape
        flag = jnp.exp(t_space) > space_merge_threshold
        rev = jnp.cumsum(flag[:, ::-1], -1)[:, ::-1]
        idx = rev.max(-1, keepdims=True) - rev
        merge = (
            jnp.zeros((bsz * c, c), jnp.float32)
            .at[jnp.arange(bsz * c), idx.reshape(-1)]
            .set((count > 0).reshape(-1).astype(jnp.float32))
            .reshape(bsz, c, c)
        )
        last_m, _ = last_index_per_column(merge > 0)
        t_logp = jnp.einsum("bc,bcm->bm", t_logp, merge)
        s_logp = jnp.einsum("bc,bcm->bm", s_logp, merge)
        t_space = jnp.take_along_axis(t_space, last_m, -1)
        s_space = jnp.take_along_axis(s_space, last_m, -1)
        count = jnp.einsum("bc,bcm->bm", count, merge)
        # The chunks the loss sums over are the merged ones: count each once.
        global_count = jnp.einsum("bc,bcm->bm", count, merge) if upstream_double_merge else count
        report["teacher_avg_chunk_lengths_after_merge"] = count.mean() / (count > 0).mean()
        report["t_min_aligned_space_logp"] = (t_space * (count > 0)).min()

    valid = (count > 0).astype(jnp.float32)
    s_logp = s_logp * valid
    t_space = t_space * valid
    s_space = s_space * valid
    bsz = t_logp.shape[0]
    gbsz = global_count.shape[0]
    all_s, all_t, all_c, all_gc = [], [], [], []
    for k in distill_chunk_sizes:
        sk = s_logp.reshape(bsz, -1, k).sum(-1)
        tk = t_logp.reshape(bsz, -1, k).sum(-1)
        ck = count.reshape(bsz, -1, k)
        gck = global_count.reshape(gbsz, -1, k)
        if "append_space" in alm_mode:
            last_pos = (jnp.cumsum((ck > 0)[..., ::-1], -1) == 1)[..., ::-1]
            sk = sk + (s_space.reshape(bsz, -1, k) * last_pos).sum(-1)
            tk = tk + (t_space.reshape(bsz, -1, k) * last_pos).sum(-1)
        all_s.append(sk)
        all_t.append(tk)
        all_c.append(ck.sum(-1))
        all_gc.append(gck.sum(-1))
    s_full = jnp.concatenate(all_s, -1)
    t_full = jnp.concatenate(all_t, -1)
    c_full = jnp.concatenate(all_c, -1)
    gc_full = jnp.concatenate(all_gc, -1)
    t_full = jnp.where(c_full > 0, t_full, LARGE_NEG)
    s_full = jnp.where(c_full > 0, s_full, LARGE_NEG)
    nz = c_full > 0
    report["legacy_loss"] = (jnp.abs(s_logp - t_logp) * (count > 0)).mean() / (count > 0).mean()
    for p, x in (("t", t_full), ("s", s_full)):
        report[f"{p}_min_p"] = (x * nz).min()
        report[f"{p}_mean_p"] = (x * nz).mean() / nz.mean()
        report[f"{p}_max_p"] = jnp.where(nz, x, LARGE_NEG).max()
    numerator = {
        "token_count": c_full,
        "chunk_count": nz.astype(jnp.float32),
        "log1p_token_count": jnp.log1p(c_full),
    }[distill_main_path_numerator]
    denominator = {
        "token_count": gc_full.mean(),
        "chunk_count": (gc_full > 0).mean(),
    }[distill_main_path_denominator]
    elementwise = diff_dense(alm_diff_fn, t_full, s_full, binarization_temp, renyi_alpha) * numerator / denominator
    return elementwise.mean() / len(distill_chunk_sizes), report


def sft_dense(batch, student_logits, vocab_mask, global_batch=None):
    global_batch = batch if global_batch is None else global_batch
    _, logprobs, _ = logprobs_dense(student_logits, vocab_mask)
    ids = batch["input_ids_student"]
    onehot = jax.nn.one_hot(ids[:, 1:], logprobs.shape[-1])
    ce = -(jax.nn.log_softmax(
        student_logits[:, :-1].astype(jnp.float32) + jnp.where(vocab_mask, 0.0, LARGE_NEG), -1
    ) * onehot).sum(-1)
    mask = batch["loss_mask_student"][:, 1:].astype(jnp.float32)
    return (ce * mask).mean() / global_batch["loss_mask_student"][:, 1:].astype(jnp.float32).mean()


def latents_dense(
    batch,
    student_hidden,
    teacher_hidden,
    *,
    latents_chunks="naive",
    latents_to_align="last_hidden_state",
    latents_normalization="l2_channelwise",
    n_prefix_layers=0,
    projector=None,
    student_attentions=None,
    teacher_attentions=None,
    global_batch=None,
):
    """alm_latents, dense. Hidden states / attentions are tuples as in ModelOutputs."""
    global_batch = batch if global_batch is None else global_batch
    chunking = {"naive": "unconstrained", "space": "space"}[latents_chunks]
    num_chunks = min(batch["input_ids_teacher"].shape[1], batch["input_ids_student"].shape[1])

    def matrices(bt):
        a = alignment_matrix(bt[f"chunks_student_{chunking}"], num_chunks, bt["loss_mask_student"])
        b = alignment_matrix(bt[f"chunks_teacher_{chunking}"], num_chunks, bt["loss_mask_teacher"])
        return a, b

    a, b = matrices(batch)
    last_b, _ = last_index_per_column(b)
    last_a, mask = last_index_per_column(a)
    _, global_mask = last_index_per_column(matrices(global_batch)[0])
    mask_f = mask.astype(jnp.float32)
    gmask_f = global_mask.astype(jnp.float32)

    def take(x, idx):
        return jnp.take_along_axis(x, idx[..., None], axis=-2)

    def normalise(t, kind, eps):
        m = mask_f[..., None]
        if kind == "l2":
            return jnp.square(t * m).mean() / mask_f.mean() + eps
        if kind == "l2_channelwise":
            return jnp.square(t * m).mean([0, 1], keepdims=True) / mask_f.mean() + eps
        if kind == "l1":
            return jnp.abs(t * m).mean() / mask_f.mean() + eps
        return jnp.abs(t * m).mean([0, 1], keepdims=True) / mask_f.mean() + eps

    if "last_hidden_state" in latents_to_align:
        pairs = [(-1, -1)]
    elif "all_hidden_states" in latents_to_align:
        pairs = [(i, i + n_prefix_layers) for i in range(len(teacher_hidden))]
    else:
        pairs = []
    hidden = 0.0
    for ti, si in pairs:
        t = take(teacher_hidden[ti], last_b)
        s = take(student_hidden[si], last_a)
        if projector is not None:
            s = s @ projector["kernel"] + projector["bias"]
        el = jnp.square(s - t) if latents_normalization.startswith("l2") else jnp.abs(s - t)
        layer = el * mask_f[..., None] / normalise(t, latents_normalization, 1e-8)
        hidden += layer.mean() / gmask_f.mean() / len(pairs)
    attention = 0.0
    if "qkv" in latents_to_align:
        n = len(teacher_attentions)
        for layer_idx in range(n):
            t = take(jnp.concatenate(teacher_attentions[layer_idx], -1), last_b)
            s = take(jnp.concatenate(student_attentions[layer_idx + n_prefix_layers], -1), last_a)
            layer = jnp.square(s - t) * mask_f[..., None]
            if latents_normalization.startswith("l2"):
                layer = layer / normalise(t, latents_normalization, 0.0)
            attention += layer.mean() / gmask_f.mean() / n
    return hidden + attention, {"hidden_state_latent_loss": hidden, "attention_latent_loss": attention}


def _fkl(student_logits, teacher_logits, kd_temp, tea_temp=1.0):
    s = student_logits / kd_temp
    t = teacher_logits / kd_temp / tea_temp
    kl = jax.nn.softmax(t) * (jax.nn.log_softmax(t) - jax.nn.log_softmax(s))
    return jnp.where(jnp.isinf(s), 0.0, kl).sum(-1)


def mined_dense(batch, student_logits, teacher_logits, mapping, student_vocab_mask, teacher_vocab_mask, kd_temp=2.0, global_batch=None):
    """baseline_mined (our pairing), with alignment matrices and matmuls."""
    global_batch = batch if global_batch is None else global_batch
    num_chunks = min(batch["input_ids_teacher"].shape[1], batch["input_ids_student"].shape[1])

    def shifted_matrices(bt):
        a = alignment_matrix(bt["chunks_student_unconstrained"], num_chunks, bt["loss_mask_student"])[:, 1:]
        b = alignment_matrix(bt["chunks_teacher_unconstrained"], num_chunks, bt["loss_mask_teacher"])[:, 1:]
        return a.astype(jnp.float32), b.astype(jnp.float32)

    a, b = shifted_matrices(batch)
    one_to_one = ((b.sum(-2) == 1) & (a.sum(-2) == 1)).astype(jnp.float32)
    s_mask_add = jnp.where(student_vocab_mask, 0.0, LARGE_NEG)
    t_logits = teacher_logits[:, :-1] + jnp.where(teacher_vocab_mask, 0.0, LARGE_NEG)
    chunk_teacher = jnp.einsum("bic,biv->bcv", b, t_logits)  # the one row of a 1:1 chunk
    per_student = jnp.einsum("brc,bcv->brv", a * one_to_one[:, None, :], chunk_teacher)
    vocab = student_vocab_mask.shape[0]
    mapping = jnp.pad(mapping, (0, vocab - mapping.shape[0]))
    no_counterpart = jnp.where(mapping < 0, LARGE_NEG, 0.0)  # -1: no teacher token
    mapped = per_student[..., jnp.maximum(mapping, 0)] + s_mask_add + no_counterpart
    is_11 = jnp.einsum("brc,bc->br", a, one_to_one) > 0
    is_target = a.sum(-1) > 0
    onehot = jax.nn.one_hot(batch["input_ids_student"][:, 1:], vocab)
    onehot_logits = onehot * 100 + (1 - onehot) * -100_000 + s_mask_add
    target = jnp.where(is_11[..., None], mapped, onehot_logits)
    kl = _fkl(student_logits[:, :-1] + s_mask_add, target, kd_temp)
    global_targets = shifted_matrices(global_batch)[0].sum()
    return (kl * is_target).sum() / global_targets


def uld_dense(batch, student_logits, teacher_logits, student_vocab_mask, teacher_vocab_mask, global_batch=None):
    global_batch = batch if global_batch is None else global_batch
    length = min(student_logits.shape[1], teacher_logits.shape[1])
    _, _, s_probs = logprobs_dense(student_logits[:, : length - 1], student_vocab_mask)
    _, _, t_probs = logprobs_dense(teacher_logits[:, : length - 1], teacher_vocab_mask)
    s_sorted = -jnp.sort(-s_probs, -1)
    t_sorted = -jnp.sort(-t_probs, -1)
    width = max(s_sorted.shape[-1], t_sorted.shape[-1])
    s_sorted = jnp.pad(s_sorted, ((0, 0), (0, 0), (0, width - s_sorted.shape[-1])))
    t_sorted = jnp.pad(t_sorted, ((0, 0), (0, 0), (0, width - t_sorted.shape[-1])))
    dist = jnp.abs(s_sorted - t_sorted).sum(-1)

    def positions(bt):
        return (bt["loss_mask_student"][:, 1:length] & bt["loss_mask_teacher"][:, 1:length]).astype(jnp.float32)

    return (dist * positions(batch)).sum() / positions(global_batch).sum()


def _kd(kind, s, t, kd_temp, tea_temp, skew_lambda, alpha):
    s = s / kd_temp
    t = t / kd_temp / tea_temp
    ps, pt = jax.nn.softmax(s), jax.nn.softmax(t)
    ls, lt = jax.nn.log_softmax(s), jax.nn.log_softmax(t)
    if kind == "kl":
        return (pt * (lt - ls)).sum(-1)
    if kind == "rkl":
        return (ps * (ls - lt)).sum(-1)
    if kind == "skl":
        return (pt * (lt - jnp.log(skew_lambda * pt + (1 - skew_lambda) * ps + 1e-9))).sum(-1)
    if kind == "srkl":
        return (ps * (ls - jnp.log((1 - skew_lambda) * pt + skew_lambda * ps + 1e-9))).sum(-1)
    # akl: tail = smallest teacher probabilities summing below alpha
    order = jnp.argsort(pt, -1)
    pt_s, ps_s = jnp.take_along_axis(pt, order, -1), jnp.take_along_axis(ps, order, -1)
    tail = (jnp.cumsum(pt_s, -1) < alpha).astype(jnp.float32)
    gap = jnp.abs(pt_s - ps_s)
    head_gap, tail_gap = (gap * (1 - tail)).sum(-1), (gap * tail).sum(-1)
    fkl, rkl = (pt * (lt - ls)).sum(-1), (ps * (ls - lt)).sum(-1)
    return (head_gap * fkl + tail_gap * rkl) / (head_gap + tail_gap)


def dskd_dense(
    batch, student, teacher, params, student_vocab_mask, teacher_vocab_mask, *,
    divergence="srkl", kd_temp=2.0, teacher_temperature=1.0, skew_lambda=0.1, adaptive_kl_alpha=0.5,
):
    """baseline_dskd for one micro-batch that is the whole step (upstream's setting)."""
    s_add = jnp.where(student_vocab_mask, 0.0, LARGE_NEG)
    t_add = jnp.where(teacher_vocab_mask, 0.0, LARGE_NEG)
    se, te = student.hidden_states[0], teacher.hidden_states[0]
    sh, th = student.hidden_states[-1][:, :-1], teacher.hidden_states[-1][:, :-1]
    s_idx = jnp.concatenate([se[:, :-1], se[:, 1:]], -1)
    t_idx = jnp.concatenate([te[:, :-1], te[:, 1:]], -1)
    lin = lambda p, x: x @ p["kernel"] + p["bias"]  # noqa: E731
    q = lin(params["projector_query"], s_idx)
    k = t_idx / t_idx.std()
    sv = lin(params["projector_s2t"], sh)
    tv = lin(params["projector_t2s"], th / th.std() + te[:, 1:] / te[:, 1:].std())
    align = q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(2 * th.shape[-1])
    am_s = batch["attention_mask_student"].astype(jnp.float32)
    am_t = batch["attention_mask_teacher"].astype(jnp.float32)
    t2s_mask = am_s[:, 1:, None] * am_t[:, None, 1:]
    s2t_mask = am_t[:, 1:, None] * am_s[:, None, 1:]
    t2s_w = jax.nn.softmax(jnp.where(t2s_mask > 0, align, LARGE_NEG), -1)
    s2t_w = jax.nn.softmax(jnp.where(s2t_mask > 0, jnp.swapaxes(align, -1, -2), LARGE_NEG), -1)
    t2s_logits = (t2s_w @ tv) @ student.output_embeddings.T + s_add
    ids = batch["input_ids_student"][:, 1:]
    lm = batch["loss_mask_student"][:, 1:].astype(jnp.float32)
    ce = -(jax.nn.log_softmax(t2s_logits) * jax.nn.one_hot(ids, t2s_logits.shape[-1])).sum(-1)
    t2s_ce = (ce * lm).mean() / lm.mean()
    acc = (jnp.argmax(t2s_logits, -1) == ids).astype(jnp.float32)
    kd = _kd(divergence, student.logits[:, :-1] + s_add, t2s_logits, kd_temp, teacher_temperature, skew_lambda, adaptive_kl_alpha)
    t2s_kd = (kd * lm * acc).mean() / ((lm * acc).mean() + 1e-8)
    s2t_logits = (s2t_w @ sv) @ teacher.output_embeddings.T + t_add
    lmt = batch["loss_mask_teacher"][:, 1:].astype(jnp.float32)
    s2t = _fkl(s2t_logits, teacher.logits[:, :-1] + t_add, kd_temp)
    s2t_kd = (s2t * lmt).mean() / lmt.mean()
    return t2s_ce + t2s_kd + s2t_kd, {"t2s_ce_loss": t2s_ce, "t2s_kd_loss": t2s_kd, "s2t_kd_loss": s2t_kd}
