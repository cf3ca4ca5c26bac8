"""Orthogonal matching pursuit (OMP) initialisation of a new tokenizer's embeddings.

Tokens the old (source) and new (target) vocabularies share are *anchors*. Every other
target token is written, in a *donor* embedding space where both anchors and new tokens
have vectors, as a sparse combination of at most `k` anchors, found by orthogonal
matching pursuit; the same coefficients applied to the base model's rows of those anchors
give its new row (Goddard & Neto, "Training-Free Tokenizer Transplantation via
Orthogonal Matching Pursuit", arXiv 2506.06607; mergekit's `tokensurgeon`). The premise
is that two models' embedding spaces are related by a map that is close to linear on
the shared tokens, so sparse coefficients carry over from one space to the other.

The donor space:

- *a donor model* (the paper's setting): the input embeddings of a model that was
  trained with the target tokenizer (`donor_embeddings`, rows indexed by target ids;
  `OmpOptions.donor_model` from Gin). Its rows hold what the donor learnt about each
  new token, which the base model has no other way to know.
- *none* (the default): FVT's own initialisation is the donor space: a new token's
  vector is the mean of the base rows of its decomposition, an anchor's its own row.
  A mean whose pieces are all anchors has its exact sparse code already (the pieces),
  so it keeps FVT's row (counted as `averaged`); only means with a piece outside the
  anchors (a source token the target lacks) are pursued, and OMP re-expresses them
  with shared tokens. `init="omp"` without a donor model is therefore FVT up to that
  re-expression (measured in docs/transfer.md). Contextual donor spaces made from the
  base model alone (its hidden states after reading the decomposition, at several
  depths) were measured too and lost to FVT on the tiny world and on SmolLM2-135M;
  they are not offered.

Special and exactly spelled tokens are handled as FVT handles them (`fvt.fvt_mapping`:
slot copies, exact copies); only the rest are fitted by OMP. A token OMP cannot code
(its donor vector is zero) keeps its FVT row (mean of its decomposition, else a seeded
random draw). Untied output embeddings get the same coefficients, unless a donor's own
output matrix is given (`donor_output_embeddings`), which is fitted separately.

OMP runs batched in JAX, all tokens of a batch at once, in a `lax.while_loop` of at
most `k` steps that ends as soon as every token of the batch has a zero residual (codes
of a few pieces cost a few steps). A step picks each token's atom most correlated with
its residual, orthogonalises it against the chosen ones (Gram-Schmidt, twice, in the
donor space: no matrix is factorised), and updates every correlation with one matrix
product over all anchors; coefficients are the least-squares ones on the chosen atoms,
as in exact OMP (scikit-learn's `orthogonal_mp_gram` gives the same codes). The cost is
`steps * anchors * D` per token; `candidates=M` instead restricts each token's pursuit
to its M anchors most correlated with it (`lax.top_k`), `steps * M * D`, an
approximation that loses accuracy (docs/transfer.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from absl import logging
from jax import lax

from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models import fvt as fvt_lib
from tokenkit.progress import Progress

DEFAULT_K = 64
DEFAULT_CANDIDATES: int | None = None  # exact OMP
# A token is finished once its best residual correlation is below this fraction of its
# norm (float32 round-off of an exact code), or the next atom is within this squared
# distance of the span already chosen.
_REL_TOL = 1e-4
_MIN_NEW_DIRECTION = 1e-6
# Host memory one batch of OMP may take (candidate rows and their projections).
_BATCH_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class OmpStats:
    """How many target tokens were initialised in each way (they sum to the target size).

    special / exact: copied as by FVT; omp: sparse codes over anchors; averaged: no code
    (zero donor vector), FVT's decomposition mean kept; fallback: a seeded random draw.
    """

    special: int
    exact: int
    omp: int
    averaged: int
    fallback: int

    @property
    def total(self) -> int:
        return self.special + self.exact + self.omp + self.averaged + self.fallback

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}

    def __str__(self) -> str:
        return (
            f"special={self.special} exact={self.exact} omp={self.omp} "
            f"averaged={self.averaged} fallback={self.fallback} (of {self.total})"
        )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OmpOptions:
    """Options of `init="omp"` (`transfer.transfer`, `python -m tokenkit.zett`).

    k: the most anchors in one token's code (the paper's default, 64).
    candidates: anchors each token's pursuit may choose from (its most correlated ones);
      at least the number of anchors means exact OMP.
    donor_model: HF directory (or hub id) of a model trained with the target tokenizer,
      whose embeddings are the donor space; None uses FVT's initialisation (see the
      module docstring).
    """

    k: int = DEFAULT_K
    candidates: int | None = DEFAULT_CANDIDATES
    donor_model: str | None = None

    def __post_init__(self) -> None:
        check_sparsity(self.k, self.candidates)


def check_sparsity(k: int, candidates: int | None) -> None:
    """Raises for a sparsity below 1 or fewer candidates than 1."""
    if k < 1:
        raise ValueError(f"OMP needs k >= 1 anchors per token; got k={k}.")
    if candidates is not None and candidates < 1:
        raise ValueError(f"OMP needs candidates >= 1 (or None for all anchors); got {candidates}.")


@dataclasses.dataclass(frozen=True)
class SparseCodes:
    """Up to `k` (row, coefficient) pairs per coded vector.

    Attributes:
      indices: int32 `[N, k]` dictionary rows, -1 for unused slots.
      coefficients: float32 `[N, k]` weights of those rows (0 in unused slots).
    """

    indices: np.ndarray
    coefficients: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        """int `[N]`: atoms in each code."""
        return (self.indices >= 0).sum(axis=1)

    def reconstruct(self, dictionary: np.ndarray) -> np.ndarray:
        """`[N, D]`: each code applied to `dictionary`'s rows."""
        rows = np.asarray(dictionary, np.float32)[np.maximum(self.indices, 0)]
        return np.einsum("nk,nkd->nd", self.coefficients, rows)


@dataclasses.dataclass(frozen=True)
class OmpResult:
    """OMP-initialised matrices (`[len(target_tokenizer), D]`) and the statistics."""

    input_embeddings: np.ndarray
    output_embeddings: np.ndarray | None
    stats: OmpStats


@functools.partial(jax.jit, static_argnames=("k", "num_candidates"))
def _pursue(atoms: jax.Array, targets: jax.Array, *, k: int, num_candidates: int):
    """OMP of each row of `targets` `[B, D]` over unit-norm `atoms` `[A, D]`.

    Returns (atom index `[B, k]`, -1 unused; coefficient on the unit atoms `[B, k]`).
    """
    b = targets.shape[0]
    rows = jnp.arange(b)
    corr = targets @ atoms.T
    restricted = num_candidates < atoms.shape[0]
    if restricted:
        _, cand = lax.top_k(jnp.abs(corr), num_candidates)
        alpha0 = jnp.take_along_axis(corr, cand, axis=1)  # [B, M]
        sub = jnp.take(atoms, cand, axis=0, mode="clip")  # [B, M, D] (clip: XLA's fast gather)
    else:
        cand, alpha0, sub = None, corr, None
    floor = _REL_TOL * jnp.linalg.norm(targets, axis=1)

    # The chosen atoms, orthonormalised in order, are q[i] = sum_s w[i, s] * atom(sel[s]);
    # proj[i] = q[i] . target, and alpha holds each candidate's correlation with the
    # residual target - sum_i proj[i] q[i].
    def step(state):
        n, sel, used, q, w, proj, alpha, done = state
        score = jnp.where(used, -1.0, jnp.abs(alpha))
        j = jnp.argmax(score, axis=1)
        atom = sub[rows, j] if restricted else jnp.take(atoms, j, axis=0, mode="clip")
        # Gram-Schmidt twice: float32 keeps the directions orthogonal over k steps.
        h = jnp.einsum("bkd,bd->bk", q, atom)
        v = atom - jnp.einsum("bk,bkd->bd", h, q)
        h2 = jnp.einsum("bkd,bd->bk", q, v)
        v = v - jnp.einsum("bk,bkd->bd", h2, q)
        h = h + h2
        new2 = jnp.sum(v * v, axis=1)
        ok = (~done) & (score[rows, j] > floor) & (new2 > _MIN_NEW_DIRECTION)
        inv = jnp.where(ok, lax.rsqrt(jnp.maximum(new2, _MIN_NEW_DIRECTION)), 0.0)
        q_new = v * inv[:, None]
        w_new = (jax.nn.one_hot(n, k, dtype=w.dtype)[None] - jnp.einsum("bk,bks->bs", h, w)) * inv[:, None]
        p_new = jnp.sum(q_new * targets, axis=1)
        col = jnp.einsum("bmd,bd->bm", sub, q_new) if restricted else q_new @ atoms.T
        return (
            n + 1,
            sel.at[:, n].set(jnp.where(ok, j, -1)),
            used.at[rows, j].set(used[rows, j] | ok),
            q.at[:, n].set(q_new),
            w.at[:, n].set(w_new),
            proj.at[:, n].set(p_new),
            alpha - p_new[:, None] * col,
            done | ~ok,
        )

    def more(state):
        return (state[0] < k) & ~jnp.all(state[-1])

    dtype = atoms.dtype
    state = (
        jnp.int32(0),
        jnp.full((b, k), -1, jnp.int32),
        jnp.zeros(alpha0.shape, bool),
        jnp.zeros((b, k, atoms.shape[1]), dtype),
        jnp.zeros((b, k, k), dtype),
        jnp.zeros((b, k), dtype),
        alpha0,
        jnp.zeros((b,), bool),
    )
    _, sel, _, _, w, proj, _, _ = lax.while_loop(more, step, state)
    gamma = jnp.einsum("bi,bis->bs", proj, w)  # coefficient of the atom in each slot
    chosen = sel >= 0
    index = jnp.maximum(sel, 0)
    if restricted:
        index = jnp.take_along_axis(cand, index, axis=1)
    return jnp.where(chosen, index, -1), jnp.where(chosen, gamma, 0.0)


def batched_omp(
    dictionary: Any,
    targets: Any,
    k: int,
    *,
    candidates: int | None = DEFAULT_CANDIDATES,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> SparseCodes:
    """Sparse codes of `targets` `[N, D]` over the rows of `dictionary` `[A, D]`.

    Each target gets at most `k` rows (fewer when it is reconstructed exactly earlier),
    chosen greedily by orthogonal matching pursuit among its `candidates` most
    correlated rows (None: all rows, exact OMP), with least-squares coefficients on the
    chosen rows. Rows may have any norm (selection uses unit rows); zero rows are never
    chosen. Deterministic: no randomness, ties go to the lowest candidate rank.

    Raises:
      ValueError: k or candidates below 1, an empty dictionary, or widths that differ.
    """
    check_sparsity(k, candidates)
    dictionary = np.asarray(dictionary, np.float32)
    targets = np.asarray(targets, np.float32)
    if dictionary.ndim != 2 or targets.ndim != 2 or dictionary.shape[1] != targets.shape[1]:
        raise ValueError(
            f"OMP needs a [A, D] dictionary and [N, D] targets; got {dictionary.shape} and "
            f"{targets.shape}."
        )
    if len(dictionary) == 0:
        raise ValueError("OMP needs at least one dictionary row (anchor); got none.")
    norms = np.linalg.norm(dictionary, axis=1)
    usable = norms > 0
    atoms = np.where(usable[:, None], dictionary / np.where(usable, norms, 1.0)[:, None], 0.0)
    k = min(k, int(usable.sum())) or 1
    m = len(atoms) if candidates is None else min(max(candidates, k), len(atoms))
    n, d = targets.shape
    if batch_size is None:
        per_row = 4 * ((m * d if m < len(atoms) else 0) + k * d + 3 * m + k * k)
        batch_size = max(1, min(1024, _BATCH_BYTES // per_row, n))
    indices = np.full((n, k), -1, np.int32)
    coefficients = np.zeros((n, k), np.float32)
    atoms_dev = jnp.asarray(atoms)
    progress = Progress(n, "OMP", unit="tokens", enabled=show_progress)
    for start in range(0, n, batch_size):
        chunk = targets[start:start + batch_size]
        size = len(chunk)
        if size < batch_size:  # one compiled shape: zero rows finish at once
            chunk = np.concatenate([chunk, np.zeros((batch_size - size, d), np.float32)])
        index, coef = _pursue(atoms_dev, jnp.asarray(chunk), k=k, num_candidates=m)
        indices[start:start + size] = np.asarray(index)[:size]
        coefficients[start:start + size] = np.asarray(coef)[:size]
        progress.update(size)
    progress.close()
    # Coefficients were fitted on unit rows; rescale them onto the rows as given.
    scale = np.where(indices >= 0, norms[np.maximum(indices, 0)], 1.0)
    coefficients = np.where(indices >= 0, coefficients / scale, 0.0).astype(np.float32)
    return SparseCodes(indices, coefficients)


def _special_ids(
    source_tokenizer: ByteifyTokenizer, target_tokenizer: ByteifyTokenizer, slot_tokens: str
) -> set[int]:
    copies = fvt_lib.slot_copies(source_tokenizer.family, target_tokenizer.family, slot_tokens=slot_tokens)
    return {int(target_tokenizer.convert_tokens_to_ids(t)) for t in copies}


def _donor_rows(matrix: Any, num_target: int, what: str) -> np.ndarray:
    rows = np.asarray(matrix)
    if rows.ndim != 2 or rows.shape[0] < num_target:
        raise ValueError(
            f"{what} must be [>= {num_target}, D'] (one row per target token, target ids); "
            f"got shape {tuple(rows.shape)}."
        )
    return rows[:num_target].astype(np.float32)


def _weights(codes: SparseCodes, rows: np.ndarray, anchor_sources: np.ndarray, shape) -> scipy.sparse.csr_matrix:
    """CSR `[num_target, num_source]`: row `rows[i]` is code `i` over the anchors' source rows."""
    used = codes.indices >= 0
    r = np.repeat(rows, codes.indices.shape[1]).reshape(codes.indices.shape)[used]
    c = anchor_sources[codes.indices[used]]
    return scipy.sparse.csr_matrix((codes.coefficients[used], (r, c)), shape=shape)


def omp(
    source_tokenizer: ByteifyTokenizer,
    target_tokenizer: ByteifyTokenizer,
    source_embeddings: Any,
    *,
    output_embeddings: Any | None = None,
    donor_embeddings: Any | None = None,
    donor_output_embeddings: Any | None = None,
    k: int = DEFAULT_K,
    candidates: int | None = DEFAULT_CANDIDATES,
    seed: int | np.random.Generator = 0,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
    show_progress: bool = True,
) -> OmpResult:
    """OMP-initialises embeddings for `target_tokenizer` from a model of `source_tokenizer`.

    Args:
      source_tokenizer, target_tokenizer: `ByteifyTokenizer`s (old and new).
      source_embeddings: `[V_source, D]` input embeddings of the base model.
      output_embeddings: `[V_source, D]` output embeddings (HF row layout) of an untied
        base model.
      donor_embeddings: `[>= len(target), D']` input embeddings of a donor model trained
        with the target tokenizer (the paper's setting); None: FVT's initialisation is
        the donor space (see the module docstring).
      donor_output_embeddings: the donor's own output matrix, to fit the base model's
        output rows separately (needs `output_embeddings` and `donor_embeddings`);
        otherwise output rows take the input rows' coefficients.
      k: the most anchors per token. candidates: see `batched_omp`.
      seed: seed (or generator) of the random rows (tokens neither copied nor coded nor
        decomposable); the input matrix draws first.
      allow_exact_match, slot_tokens: as `fvt.fvt_mapping`; exact matches are the
        anchors, so allow_exact_match=False leaves none.
      show_progress: log progress lines.

    Returns:
      `OmpResult` with `[len(target_tokenizer), D]` matrices in the inputs' dtype.

    Raises:
      ValueError: k or candidates below 1, no shared (anchor) tokens, shapes that do
        not match, or a donor output matrix without an input one or an untied model.
    """
    check_sparsity(k, candidates)
    num_rows = int(np.shape(source_embeddings)[0])
    if output_embeddings is not None and tuple(np.shape(output_embeddings)) != tuple(
        np.shape(source_embeddings)
    ):
        raise ValueError(
            f"Output embeddings have shape {tuple(np.shape(output_embeddings))}; the input "
            f"embeddings {tuple(np.shape(source_embeddings))}. Pass the lm_head kernel "
            "transposed ([V, D])."
        )
    if donor_output_embeddings is not None and (donor_embeddings is None or output_embeddings is None):
        raise ValueError(
            "donor_output_embeddings fits an untied model's output rows from a donor model: "
            "it needs donor_embeddings and output_embeddings too."
        )
    mapping = fvt_lib.fvt_mapping(
        source_tokenizer, target_tokenizer, num_rows, allow_exact_match=allow_exact_match,
        slot_tokens=slot_tokens, show_progress=show_progress,
    )
    num_target = mapping.num_target
    special = _special_ids(source_tokenizer, target_tokenizer, slot_tokens)
    copied = mapping.copy_from >= 0
    anchors = np.asarray([i for i in np.flatnonzero(copied) if int(i) not in special], np.int64)
    if len(anchors) == 0:
        raise ValueError(
            f"OMP needs tokens shared by {source_tokenizer.spec} and {target_tokenizer.spec} "
            f"(exact spellings in both) as anchors; there are none (allow_exact_match="
            f"{allow_exact_match})."
        )
    anchor_sources = mapping.copy_from[anchors]
    averaged = ~copied & ~mapping.fallback
    source = np.asarray(source_embeddings)

    if donor_embeddings is None:
        # FVT's rows are the donor space: means for averaged tokens, own rows for anchors.
        # A mean of anchors' rows has its exact code already (its pieces): it keeps FVT's
        # row, and only means with a piece outside the anchors are pursued.
        is_anchor_row = np.zeros(num_rows, bool)
        is_anchor_row[anchor_sources] = True
        decomposed = np.flatnonzero(averaged)
        outside = mapping.average[decomposed][:, ~is_anchor_row].getnnz(axis=1) > 0
        targets = decomposed[outside]
        donor_space = (mapping.average[targets] @ source.astype(np.float32), source[anchor_sources])
    else:
        donor = _donor_rows(donor_embeddings, num_target, "donor_embeddings")
        targets = np.flatnonzero(~copied)
        donor_space = (donor[targets], donor[anchors])
    logging.info(
        "OMP: coding %d tokens over %d anchors (k=%d, candidates=%s, donor space: %s).",
        len(targets), len(anchors), k, candidates,
        "FVT means" if donor_embeddings is None else f"donor rows, width {donor_space[1].shape[1]}",
    )
    codes = batched_omp(donor_space[1], donor_space[0], k, candidates=candidates,
                        show_progress=show_progress)
    coded = codes.sizes > 0
    shape = (num_target, num_rows)

    def mapping_for(codes_: SparseCodes) -> fvt_lib.FvtMapping:
        # FVT's rows stay for tokens without a code; the mapping is used for `apply` only.
        weights = _weights(
            SparseCodes(codes_.indices[coded], codes_.coefficients[coded]),
            targets[coded], anchor_sources, shape,
        )
        keep = np.ones(num_target, bool)
        keep[targets[coded]] = False
        kept = scipy.sparse.diags(keep.astype(np.float32)) @ mapping.average
        fallback = mapping.fallback.copy()
        fallback[targets[coded]] = False
        return dataclasses.replace(mapping, average=(weights + kept).tocsr(), fallback=fallback)

    input_mapping = mapping_for(codes)
    has_code = np.zeros(num_target, bool)
    has_code[targets[coded]] = True
    stats = OmpStats(
        special=int(copied.sum()) - len(anchors),
        exact=len(anchors),
        omp=int(has_code.sum()),
        averaged=int((averaged & ~has_code).sum()),
        fallback=int(input_mapping.fallback.sum()),
    )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    new_inputs = input_mapping.apply(source, rng)
    new_outputs = None
    if output_embeddings is not None:
        output_mapping = input_mapping
        if donor_output_embeddings is not None:
            donor_out = _donor_rows(donor_output_embeddings, num_target, "donor_output_embeddings")
            out_codes = batched_omp(donor_out[anchors], donor_out[targets], k, candidates=candidates,
                                    show_progress=show_progress)
            coded_out = out_codes.sizes > 0
            if not np.array_equal(coded_out, coded):
                logging.warning(
                    "OMP: %d tokens have a code in the donor's input space but not its output "
                    "space (or the reverse); they keep FVT's output row.",
                    int((coded_out != coded).sum()),
                )
            output_mapping = mapping_for(SparseCodes(
                np.where(coded_out[:, None], out_codes.indices, -1),
                np.where(coded_out[:, None], out_codes.coefficients, 0.0),
            ))
        new_outputs = output_mapping.apply(output_embeddings, rng)
    logging.info("OMP %s -> %s: %s", source_tokenizer.spec, target_tokenizer.spec, stats)
    return OmpResult(new_inputs, new_outputs, stats)


def load_donor(donor_model: str, target_tokenizer: ByteifyTokenizer) -> tuple[np.ndarray, np.ndarray | None]:
    """The donor model's input embeddings and, if untied, output embeddings (`[V, D']`
    host arrays, HF row layout).

    Raises:
      ValueError: the donor has fewer embedding rows than the target tokenizer has ids.
    """
    from tokenkit.models import load_pretrained  # the loader imports this package's modules
    from tokenkit.models.surgery import embedding_matrices

    config, params = load_pretrained(donor_model, dtype=None)
    inputs, outputs = embedding_matrices(config, params)
    if config.vocab_size < len(target_tokenizer):
        raise ValueError(
            f"Donor model {donor_model} has {config.vocab_size} embedding rows; the target "
            f"tokenizer {target_tokenizer.spec} has {len(target_tokenizer)} ids. The donor "
            "must be a model trained with the target tokenizer."
        )
    host = lambda x: np.asarray(jax.device_get(x))  # noqa: E731
    return host(inputs), None if outputs is None else host(outputs)


def transfer_embeddings(
    source: ByteifyTokenizer,
    target: ByteifyTokenizer,
    inputs: np.ndarray,
    outputs: np.ndarray | None,
    *,
    seed: int = 0,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
) -> OmpResult:
    """What `transfer.transfer(init="omp")` uses in place of FVT: `omp` with the options
    bound to `OmpOptions` (k, candidates, donor model)."""
    options = OmpOptions()
    donor_inputs = donor_outputs = None
    if options.donor_model is not None:
        donor_inputs, donor_outputs = load_donor(options.donor_model, target)
        if outputs is None:
            donor_outputs = None
    return omp(
        source, target, inputs, output_embeddings=outputs, donor_embeddings=donor_inputs,
        donor_output_embeddings=donor_outputs, k=options.k, candidates=options.candidates,
        seed=seed, allow_exact_match=allow_exact_match, slot_tokens=slot_tokens,
    )
