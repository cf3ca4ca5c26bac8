"""ALM: approximate likelihood matching of chunk log-likelihoods across tokenizers.

Chunk `k` of a teacher row and chunk `k` of the student row spell the same bytes, so
their likelihoods under the two models are comparable: for each chunk the loss compares
teacher and student log-likelihoods (sums of next-token log-probs of the chunk's tokens)
through a binarised divergence (`divergences.BINARY_DIVERGENCES`).

From chunk ids to the loss, per row (`C` chunk slots, see `chunks.num_chunk_slots`):

1. chunk ids of tokens outside the loss mask become -1;
2. per-token log-probs `log P(x_p | x_<p)` for positions p >= 1 (position 0 predicts
   nothing) are summed by chunk id (`segment_sum`) and clipped at 0; the teacher's
   token count per chunk (positions >= 1) decides which chunks exist;
3. `eos_as_space` / the space mask gives, at each chunk's last token, the log-prob that
   the *next* token starts with a space (or is EOS), which `append_space` adds to the
   chunk's log-likelihood (debiasing: the chunk must also *end* there);
4. `merge_by_space_prob` merges consecutive chunks until the teacher's probability of
   a following space exceeds `space_merge_threshold`: a relabelling of chunk
   ids by an exclusive cumulative sum of those boundaries, then another segment sum;
5. `distill_chunk_sizes` optionally also compares groups of `k` consecutive chunks;
6. empty chunks get a large negative log-likelihood, the divergence of each chunk is
   weighted by the numerator (its token count, 1, or log1p of its token count) and
   divided by the denominator, a statistic of the global batch.

With `merge_by_space_prob` and the `chunk_count` denominator the number of merged chunks
depends on the teacher's predictions, which exist only for the micro-batch at hand: the
global count is then estimated as the global unmerged count times this micro-batch's
merged/unmerged ratio (exact when the micro-batch is the whole step, as upstream).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp

from tokenkit.losses import chunks as chunklib
from tokenkit.losses.context import (
    LARGE_NEGATIVE,
    LossContext,
    ModelOutputs,
    DEFAULT_SPACE_MASK_MODE,
    TokenizerConstants,
    check_choice,
    parse_space_mask_mode,
    safe_divide,
)
from tokenkit.losses.divergences import BINARY_DIVERGENCES
from tokenkit.losses.logprobs import position_stats, token_logprobs_at

CHUNKINGS = ("unconstrained", "space", "unbiased")
ALM_MODE_PARTS = ("append_space", "merge_by_space_prob", "eos_as_space")
NUMERATORS = ("token_count", "chunk_count", "log1p_token_count")
DENOMINATORS = ("token_count", "chunk_count")


def parse_alm_mode(alm_mode: str) -> frozenset[str]:
    """`"merge_by_space_prob+append_space"` -> its parts; `""` is plain chunk matching."""
    parts = frozenset(p for p in alm_mode.split("+") if p)
    unknown = sorted(parts - set(ALM_MODE_PARTS))
    if unknown:
        raise ValueError(
            f"Invalid alm_mode {alm_mode!r} (unknown parts {unknown}); use a '+'-combination "
            f"of {list(ALM_MODE_PARTS)} (or '' for none)."
        )
    return parts


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AlmOptions:
    """Static options of the `alm_*` losses (upstream names and defaults).

    alm_mode: '+'-combination of `append_space` (add the log-prob of a following space
      at the chunk end), `merge_by_space_prob` (merge chunks until the teacher expects a
      space), `eos_as_space` (use EOS instead of the space mask).
    alm_diff_fn: the binarised divergence, one of `divergences.BINARY_DIVERGENCES`.
    binarization_temp: temperature T, compare `y ** (1/T)` rather than `y`.
    renyi_alpha: order of the `renyi` divergence.
    space_merge_threshold: space probability above which a merged chunk ends (the
      upstream's `tokenizer_pair_bias_threshold`, which `TokenizerPair` sets for both
      of its uses).
    space_mask_mode: which tokens count as starting with a space for `append_space` and
      `merge_by_space_prob`: a '+'-combination of `space`, `tab`, `newline`, `special`.
    distill_chunk_sizes: group sizes k; each compares sums over k consecutive chunks
      (deprecated upstream; keep `(1,)`).
    distill_main_path_numerator: per-chunk weight, `token_count`, `chunk_count` (1) or
      `log1p_token_count`, counting teacher tokens.
    distill_main_path_denominator: `token_count` or `chunk_count` of the global batch.
    """

    alm_mode: str = "merge_by_space_prob+append_space"
    alm_diff_fn: str = "binary_ce"
    binarization_temp: float = 100.0
    renyi_alpha: float = 0.5
    space_merge_threshold: float = 0.1
    space_mask_mode: str = DEFAULT_SPACE_MASK_MODE
    distill_chunk_sizes: Sequence[int] = (1,)
    distill_main_path_numerator: str = "chunk_count"
    distill_main_path_denominator: str = "chunk_count"

    def __post_init__(self):
        parse_alm_mode(self.alm_mode)
        check_choice("alm_diff_fn", self.alm_diff_fn, list(BINARY_DIVERGENCES))
        check_choice("distill_main_path_numerator", self.distill_main_path_numerator, NUMERATORS)
        check_choice("distill_main_path_denominator", self.distill_main_path_denominator, DENOMINATORS)
        sizes = tuple(int(k) for k in self.distill_chunk_sizes)
        if not sizes or any(k < 1 for k in sizes):
            raise ValueError(f"Invalid distill_chunk_sizes={list(self.distill_chunk_sizes)}; need positive ints.")
        object.__setattr__(self, "distill_chunk_sizes", sizes)
        parse_space_mask_mode(self.space_mask_mode)
        if self.binarization_temp <= 0:
            raise ValueError(f"Invalid binarization_temp={self.binarization_temp}; must be > 0.")
        if self.alm_diff_fn == "renyi" and self.renyi_alpha == 1:
            raise ValueError("Invalid renyi_alpha=1 (the Rényi divergence of order 1 is KL; use alpha != 1).")

    @property
    def modes(self) -> frozenset[str]:
        return parse_alm_mode(self.alm_mode)


@dataclasses.dataclass
class _SideChunks:
    """One side's per-chunk quantities, `[B, C]` each."""

    logp: jax.Array  # sum of next-token log-probs of the chunk's tokens (positions >= 1)
    end_space_logp: jax.Array  # log P(space follows) at the chunk's last token
    tokens: jax.Array  # token count, positions >= 1
    tokens_with_first: jax.Array  # token count including position 0 (diagnostics)


def _side_chunks(
    outputs: ModelOutputs,
    constants: TokenizerConstants,
    input_ids: jax.Array,
    chunk_ids: jax.Array,
    num_chunks: int,
    modes: frozenset[str],
) -> _SideChunks:
    stats = position_stats(outputs.logits, input_ids, constants.space_mask)
    logp = jnp.minimum(chunklib.chunk_sum(stats.next_token_logprobs(), chunk_ids[:, 1:], num_chunks), 0.0)
    if "eos_as_space" in modes:
        space_logp = token_logprobs_at(outputs.logits, stats.log_norm, constants.eos_token_id)
    else:
        space_logp = stats.subset_logprobs()
    last = chunklib.chunk_last_positions(chunk_ids, num_chunks)
    return _SideChunks(
        logp=logp,
        end_space_logp=chunklib.gather_positions(space_logp, last),
        tokens=chunklib.chunk_token_counts(chunk_ids[:, 1:], num_chunks),
        tokens_with_first=chunklib.chunk_token_counts(chunk_ids, num_chunks),
    )


def _num_slots(batch, chunking: str, options: AlmOptions, loss_name: str) -> int:
    chunks = batch.chunking(chunking, loss_name)
    return chunklib.num_chunk_slots(
        chunks.teacher.shape[1], chunks.student.shape[1], options.distill_chunk_sizes
    )


def _count_normaliser(group_counts: Sequence[jax.Array], kind: str) -> jax.Array:
    """Sum over chunk-group sizes of the teacher tokens, or of the non-empty groups."""
    if kind == "token_count":
        return sum(jnp.sum(c) for c in group_counts)
    return sum(jnp.sum(c > 0).astype(jnp.float32) for c in group_counts)


def _teacher_group_counts(batch, chunking: str, options: AlmOptions, loss_name: str) -> list[jax.Array]:
    """Unmerged teacher token counts per chunk group, for each group size."""
    num_chunks = _num_slots(batch, chunking, options, loss_name)
    chunk_ids, _ = chunklib.loss_chunk_ids(batch, chunking, loss_name)
    counts = chunklib.chunk_token_counts(chunk_ids[:, 1:], num_chunks)
    return [chunklib.group_sum(counts, k) for k in options.distill_chunk_sizes]


def _avg_chunk_length(counts: jax.Array) -> jax.Array:
    return safe_divide(jnp.sum(counts), jnp.sum(counts > 0))


def _merge_side(side: _SideChunks, merged: jax.Array, last: jax.Array) -> _SideChunks:
    num_chunks = side.logp.shape[1]
    return dataclasses.replace(
        side,
        logp=chunklib.chunk_sum(side.logp, merged, num_chunks),
        end_space_logp=chunklib.gather_positions(side.end_space_logp, last),
        tokens=chunklib.chunk_sum(side.tokens, merged, num_chunks),
    )


def _merge_by_space_prob(teacher: _SideChunks, student: _SideChunks, threshold: float, diagnostics):
    """Merges consecutive chunks until the teacher's following-space prob exceeds threshold."""
    num_chunks = teacher.logp.shape[1]
    boundary = jnp.exp(teacher.end_space_logp) > threshold
    # Chunks without teacher tokens take no part (as in the dense merging matrix).
    merged = jnp.where(teacher.tokens > 0, chunklib.merged_chunk_ids(boundary), -1)
    slots = jnp.broadcast_to(jnp.arange(num_chunks, dtype=jnp.int32), merged.shape)
    last = chunklib.chunk_max(slots, merged, num_chunks, empty=0)
    teacher, student = _merge_side(teacher, merged, last), _merge_side(student, merged, last)
    diagnostics["teacher_avg_chunk_lengths_after_merge"] = _avg_chunk_length(teacher.tokens)
    diagnostics["t_min_aligned_space_logp"] = jnp.min(teacher.end_space_logp * (teacher.tokens > 0))
    return teacher, student


def _extrema_diagnostics(prefix: str, logp: jax.Array, nonempty: jax.Array, diagnostics) -> None:
    diagnostics[f"{prefix}_min_p"] = jnp.min(logp * nonempty)
    diagnostics[f"{prefix}_mean_p"] = safe_divide(jnp.sum(logp * nonempty), jnp.sum(nonempty))
    diagnostics[f"{prefix}_max_p"] = jnp.max(jnp.where(nonempty, logp, LARGE_NEGATIVE))


def _chunk_groups(teacher: _SideChunks, student: _SideChunks, sizes: Sequence[int], append_space: bool):
    """Per group of k consecutive chunks (each k in `sizes`, concatenated): teacher and
    student log-likelihoods (large negative where empty) and teacher token counts."""
    counts = teacher.tokens
    nonempty = counts > 0
    student_logp = student.logp * nonempty
    teacher_space = teacher.end_space_logp * nonempty
    student_space = student.end_space_logp * nonempty
    t_groups, s_groups, c_groups = [], [], []
    for k in sizes:
        t_k = chunklib.group_sum(teacher.logp, k)
        s_k = chunklib.group_sum(student_logp, k)
        if append_space:
            t_k = t_k + chunklib.last_nonempty_in_group(teacher_space, counts, k)
            s_k = s_k + chunklib.last_nonempty_in_group(student_space, counts, k)
        t_groups.append(t_k)
        s_groups.append(s_k)
        c_groups.append(chunklib.group_sum(counts, k))
    group_counts = jnp.concatenate(c_groups, -1)
    filled = lambda x: jnp.where(group_counts > 0, jnp.concatenate(x, -1), LARGE_NEGATIVE)  # noqa: E731
    return filled(t_groups), filled(s_groups), group_counts


def alm_loss(
    ctx: LossContext, chunking: str, options: AlmOptions | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The ALM loss on the chunks of `chunking` (`unconstrained`, `space` or `unbiased`)."""
    check_choice("chunking", chunking, CHUNKINGS)
    options = AlmOptions() if options is None else options
    name = f"alm_{chunking}"
    teacher_out, teacher_constants = ctx.frozen_teacher(name)
    modes = options.modes
    batch = ctx.batch
    num_chunks = _num_slots(batch, chunking, options, name)
    teacher_chunks, student_chunks = chunklib.loss_chunk_ids(batch, chunking, name)
    teacher = _side_chunks(
        teacher_out, teacher_constants, batch.side("teacher").input_ids, teacher_chunks,
        num_chunks, modes,
    )
    student = _side_chunks(
        ctx.student, ctx.student_constants, batch.student.input_ids, student_chunks,
        num_chunks, modes,
    )
    diagnostics = {
        "student_avg_chunk_lengths": _avg_chunk_length(student.tokens_with_first),
        "teacher_avg_chunk_lengths": _avg_chunk_length(teacher.tokens_with_first),
    }
    # Which chunks exist is decided by the teacher's side (its tokens from position 1).
    unmerged_chunks = _count_normaliser(
        [chunklib.group_sum(teacher.tokens, k) for k in options.distill_chunk_sizes], "chunk_count"
    )
    if "merge_by_space_prob" in modes:
        teacher, student = _merge_by_space_prob(teacher, student, options.space_merge_threshold, diagnostics)
    nonempty = teacher.tokens > 0
    diagnostics["legacy_loss"] = safe_divide(
        jnp.sum(jnp.abs(student.logp * nonempty - teacher.logp) * nonempty), jnp.sum(nonempty)
    )
    teacher_logp, student_logp, counts = _chunk_groups(
        teacher, student, options.distill_chunk_sizes, "append_space" in modes
    )
    nonempty = counts > 0
    _extrema_diagnostics("t", teacher_logp, nonempty, diagnostics)
    _extrema_diagnostics("s", student_logp, nonempty, diagnostics)
    diagnostics["n_chunks"] = jnp.sum(nonempty).astype(jnp.float32)

    numerator = {
        "token_count": counts,
        "chunk_count": nonempty.astype(jnp.float32),
        "log1p_token_count": jnp.log1p(counts),
    }[options.distill_main_path_numerator]
    denominator = _count_normaliser(
        _teacher_group_counts(ctx.step_batch, chunking, options, name),
        options.distill_main_path_denominator,
    )
    if "merge_by_space_prob" in modes and options.distill_main_path_denominator == "chunk_count":
        # The global merged count is unknowable here: scale by this micro-batch's ratio.
        denominator = denominator * safe_divide(jnp.sum(nonempty), unmerged_chunks)
    diff = BINARY_DIVERGENCES[options.alm_diff_fn](
        teacher_logp, student_logp, temp=options.binarization_temp, renyi_alpha=options.renyi_alpha
    )
    # Empty chunks have numerator 0; the select also keeps a divergence that is not
    # finite at the fill value from turning the sum into NaN.
    weighted = jnp.where(nonempty, diff * numerator, 0.0)
    loss = safe_divide(jnp.sum(weighted), denominator) / len(options.distill_chunk_sizes)
    return loss, diagnostics
