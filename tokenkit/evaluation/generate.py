"""Fast generation with a KV cache: a jitted prefill, then a compiled decode loop.

    generator = Generator(model, lengths=(128, 256, 512), tokens_per_batch=4096)
    results = generator.generate(prompts, max_new_tokens=64, until=["\\n"])
    results[0].text, results[0].token_ids, results[0].finish_reason

How it runs:

- Prompts are encoded (slot markers filled by each model's family), sorted longest
  first and packed into batches: a batch whose longest prompt plus `max_new_tokens`
  fits in the bucket length `S` (the smallest of `lengths` that is large enough) has
  `tokens_per_batch // S` rows, padded with empty rows, so every batch of a bucket has
  one shape and compiles once.
- Prefill runs the right-padded prompts, all but their last token, through the model
  once, writing the KV cache without computing logits (rows of different lengths are
  fine: the cache keeps each row's length).
- Decoding is one `lax.while_loop` under `jax.jit`: feed each row's pending token (the
  last prompt token first) with the cache, sample the next token from the logits
  (greedy, temperature, top-k, top-p), record it, make it the pending token. A row ends
  at its model's eos / end-of-turn token or at `max_new_tokens`; finished rows feed a
  masked token so their cache stops growing. On a CPU the loop runs the layers
  unrolled over per-layer weights (`Transformer.layer_loop`), which XLA reads in place.
- Stop sequences (`until`) are matched on the *decoded text*, exactly as lm-eval does:
  the loop returns to the host every `stop_check_every` steps, rows whose text contains
  a stop sequence are marked finished, and the text is cut before its first occurrence.

Several models (a token-level ensemble, `tokenkit.evaluation.ensemble`) decode in
lockstep: each keeps its own prompt encoding and cache, their logits are combined on
the unified vocabulary every step, and the chosen token is fed to all of them.

Sampling is reproducible: row r of a `generate` call draws from
`fold_in(fold_in(key(seed), r), step)`, whatever the batching.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit.evaluation import ensemble
from tokenkit.evaluation.model import EvalModel
from tokenkit.evaluation.scoring import bucket_length, plan_batches
from tokenkit.models import KVCache, init_cache, unstack_layers
from tokenkit.models.side import Forward
from tokenkit.progress import Progress

Array = jax.Array

DEFAULT_LENGTHS: tuple[int, ...] = (128, 256, 512, 1024, 2048)
FINISH_REASONS: tuple[str, ...] = ("stop_sequence", "eos", "length")

# lm-eval generation kwargs this backend understands.
GEN_KWARGS: tuple[str, ...] = (
    "until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p",
)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen.

    Attributes:
      do_sample: False picks the most likely token (greedy); True samples.
      temperature: divides the logits before sampling (> 0).
      top_k: sample among the k most likely tokens only (0: no limit).
      top_p: sample among the smallest set of most likely tokens whose probability
        reaches top_p (nucleus sampling; 1.0: no limit).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature} (use do_sample=False "
                "for greedy decoding)"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = no limit), got {self.top_p}")


def sampling_from_gen_kwargs(
    gen_kwargs: Mapping[str, Any], default: SamplingConfig
) -> SamplingConfig:
    """The sampling settings an lm-eval request asks for, on top of `default`.

    As in lm-eval's Hugging Face backend, `temperature=0` means greedy, and so does
    `do_sample=False` whatever the temperature.
    """
    do_sample = bool(gen_kwargs.get("do_sample", default.do_sample))
    temperature = float(gen_kwargs.get("temperature", default.temperature))
    if temperature == 0.0:
        do_sample, temperature = False, 1.0
    if not do_sample:
        return SamplingConfig()
    return SamplingConfig(
        do_sample=True,
        temperature=temperature,
        top_k=int(gen_kwargs.get("top_k", default.top_k) or 0),
        top_p=float(gen_kwargs.get("top_p", default.top_p) or 1.0),
    )


def sample_tokens(logits: Array, keys: Array, config: SamplingConfig) -> Array:
    """Next token of each row: `logits` float32 `[B, V]`, `keys` one PRNG key per row."""
    if not config.do_sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / config.temperature
    if config.top_k > 0:
        k = min(config.top_k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The most likely token always stays (its mass before is 0 < top_p).
        kept = mass_before < config.top_p
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """One generated reply.

    Attributes:
      text: the decoded reply, cut before the first stop sequence.
      token_ids: the generated ids (of the output model): without the eos token, and
        for "stop_sequence" the shortest prefix whose text contains the stop sequence
        (so it does not depend on how often stop sequences are checked).
      finish_reason: "stop_sequence", "eos" (the model ended its reply) or "length".
    """

    text: str
    token_ids: list[int]
    finish_reason: str


@flax.struct.dataclass
class DecodeState:
    """The loop carry of decoding (one batch)."""

    caches: tuple[KVCache, ...]
    # Per member `[B, W]`: the last W ids, ending with the pending token (the one the
    # next step feeds); W is 1, or the expansion's lookback for expanded models.
    histories: tuple[Array, ...]
    history_masks: tuple[Array, ...]
    tokens: Array  # [B, N] unified ids generated so far
    num_tokens: Array  # [B] generated tokens kept (the stop token excluded)
    finished: Array  # [B]
    hit_eos: Array  # [B]
    keys: Array  # [B] per-row PRNG keys
    step: Array  # scalar


def cut_at_stop_sequences(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest occurrence of any of `until`, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_lengths(lengths: Sequence[int], max_length: int | None = None) -> tuple[int, ...]:
    """Validated bucket lengths, ascending; those above `max_length` are dropped (logged)."""
    out = sorted(int(x) for x in lengths)
    if not out or out[0] < 1:
        raise ValueError(f"lengths must be positive integers, got {list(lengths)}")
    if max_length is not None:
        kept = [x for x in out if x <= max_length]
        if len(kept) < len(out):
            logging.warning(
                "Dropping bucket lengths %s: above the model's maximum length %d.",
                [x for x in out if x > max_length], max_length,
            )
        if not kept:
            raise ValueError(
                f"All bucket lengths {out} exceed the model's maximum length {max_length}"
            )
        out = kept
    return tuple(out)


def combine_unified(
    member_logits: Sequence[Array], vocabulary: ensemble.UnifiedVocabulary, strategy: str
) -> Array:
    """The members' logits `[B, V_i]` gathered onto the unified vocabulary and combined
    (a single model's logits are used as they are)."""
    unified = [
        ensemble.gather_unified(x, vocabulary.member_ids[i], vocabulary.is_identity)
        for i, x in enumerate(member_logits)
    ]
    if len(unified) == 1:
        return unified[0]
    return ensemble.combine_logits(unified, strategy)


def _prefill(forwards, params, input_ids, masks, caches):
    """Writes every member's prompt (all but its last token) into its cache. No logits
    are computed: the last prompt token is the first thing the decode loop feeds, so a
    `[B, T, V]` logits array never exists."""
    return tuple(
        forward(p, ids, mask, cache=cache, expansion=expansion, return_logits=False).cache
        for forward, (p, expansion), ids, mask, cache in zip(forwards, params, input_ids, masks, caches)
    )


def _decode(forwards, vocabulary, strategy, params, state: DecodeState, limit, *,
            sampling: SamplingConfig) -> DecodeState:
    """Decodes until step `limit` or until every row is finished (one while_loop).

    Each step feeds every member its pending token (the last prompt token first), combines
    the members' next-token logits, samples, and makes the sample the pending token.
    """
    member_ids = [jnp.asarray(ids) for ids in vocabulary.member_ids]
    stop_ids = jnp.asarray(vocabulary.stop_ids, jnp.int32)
    if jax.default_backend() == "cpu":
        # Each step reads every weight. XLA's CPU products copy a layer's weights out of
        # the scan's stack first (twice the traffic of the product); unstacked once per
        # call (every `stop_check_every` steps at most), they are read where they lie.
        # Accelerators keep the stack: no copy of the weights, one compiled layer.
        forwards = tuple(forward.unstacked() for forward in forwards)
        params = tuple((unstack_layers(p, forward.module.config.num_layers), expansion)
                       for forward, (p, expansion) in zip(forwards, params))

    def cond(s: DecodeState):
        return (s.step < limit) & ~jnp.all(s.finished)

    def body(s: DecodeState):
        active = ~s.finished
        # Finished rows feed a masked token: their cache stops growing.
        feed_mask = active.astype(jnp.int32)[:, None]
        logits, caches = [], []
        for i, forward in enumerate(forwards):
            p, expansion = params[i]
            expanded = None
            if expansion is not None:
                # The window ends with the pending token, so its last expanded id is the
                # one the full sequence would give it.
                expanded = expansion.apply(s.histories[i], s.history_masks[i])[:, -1:]
            out = forward(p, s.histories[i][:, -1:], feed_mask, cache=s.caches[i],
                          expanded_input_ids=expanded)
            logits.append(out.logits[:, -1])
            caches.append(out.cache)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.keys, s.step)
        token = sample_tokens(combine_unified(logits, vocabulary, strategy), keys, sampling)
        token = jnp.where(active, token, 0)
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
        is_stop = active & jnp.isin(token, stop_ids)
        finished = s.finished | is_stop
        histories, history_masks = [], []
        for i in range(len(forwards)):
            ids = jnp.take(member_ids[i], token)[:, None]
            histories.append(jnp.concatenate([s.histories[i][:, 1:], ids], axis=1))
            history_masks.append(jnp.concatenate(
                [s.history_masks[i][:, 1:], (~finished).astype(jnp.int32)[:, None]], axis=1))
        return DecodeState(
            caches=tuple(caches),
            histories=tuple(histories),
            history_masks=tuple(history_masks),
            tokens=tokens,
            num_tokens=s.num_tokens + (active & ~is_stop).astype(jnp.int32),
            finished=finished,
            hit_eos=s.hit_eos | is_stop,
            keys=s.keys,
            step=s.step + 1,
        )

    return jax.lax.while_loop(cond, body, state)


_COMPILED: dict[tuple, tuple[Callable, Callable]] = {}


def compiled_functions(
    forwards: tuple[Forward, ...], vocabulary: ensemble.UnifiedVocabulary, strategy: str
) -> tuple[Callable, Callable]:
    """The jitted (prefill, decode) of a set of members, shared by every `Generator` of
    the same models (same modules, tokenizer sizes and unified vocabulary), whatever
    their params: repeated evaluations compile once."""
    key = (forwards, vocabulary.fingerprint, strategy)
    if key not in _COMPILED:
        _COMPILED[key] = (
            jax.jit(functools.partial(_prefill, forwards)),
            jax.jit(functools.partial(_decode, forwards, vocabulary, strategy),
                    static_argnames=("sampling",)),
        )
    return _COMPILED[key]


class Generator:
    """Generates replies with one model, or with an ensemble in lockstep.

    Args:
      models: an `EvalModel` or a sequence of them (a lockstep ensemble).
      lengths: bucket lengths (prompt + new tokens); ascending.
      tokens_per_batch: rows x bucket length of a batch.
      combine_strategy: how ensemble members' logits combine (see `ensemble`).
      stop_check_every: decode steps between checks of the stop sequences.
      vocabulary: the ensemble's unified vocabulary (built from the models if None).
      show_progress: log progress lines while generating.
    """

    def __init__(
        self,
        models: EvalModel | Sequence[EvalModel],
        *,
        lengths: Sequence[int] = DEFAULT_LENGTHS,
        tokens_per_batch: int = 4096,
        combine_strategy: str = "mean_prob",
        stop_check_every: int = 16,
        vocabulary: ensemble.UnifiedVocabulary | None = None,
        show_progress: bool = True,
    ) -> None:
        self.models = (models,) if isinstance(models, EvalModel) else tuple(models)
        if not self.models:
            raise ValueError("Generator needs at least one model")
        ensemble.check_combine_strategy(combine_strategy)
        if stop_check_every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}")
        max_length = min(m.config.max_position_embeddings for m in self.models)
        self.lengths = check_lengths(lengths, max_length)
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        self.tokens_per_batch = tokens_per_batch
        self.combine_strategy = combine_strategy
        self.stop_check_every = stop_check_every
        self.show_progress = show_progress
        self.vocabulary = vocabulary or ensemble.UnifiedVocabulary.build(
            [m.tokenizer for m in self.models], [m.stop_ids for m in self.models]
        )
        self._prefill, self._decode = compiled_functions(
            tuple(m.forward for m in self.models), self.vocabulary, combine_strategy
        )

    # ------------------------------------------------------------------ host side

    def encode(self, prompt: str | Sequence[int]) -> list[list[int]]:
        """Each member's ids of `prompt` (a string, or ids for a one-model generator)."""
        if isinstance(prompt, str):
            return [m.encode(prompt) for m in self.models]
        if len(self.models) > 1:
            raise TypeError("An ensemble generator takes prompts as strings, not ids")
        return [[int(i) for i in prompt]]

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        *,
        max_new_tokens: int,
        until: Sequence[str] = (),
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
    ) -> list[GenerationResult]:
        """Replies to `prompts` (strings with optional slot markers, or id lists).

        Prompts longer than the largest bucket minus `max_new_tokens` lose tokens from
        the left, as in lm-eval (counted in the log).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        room = self.lengths[-1] - max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the largest "
                f"bucket length {self.lengths[-1]}; raise `lengths` or lower max_new_tokens"
            )
        until = [s for s in until if s]
        encoded = [self.encode(p) for p in prompts]
        truncated = 0
        for per_member in encoded:
            for i, ids in enumerate(per_member):
                if len(ids) > room:
                    per_member[i] = ids[len(ids) - room:]
                    truncated += 1
                elif not ids:
                    raise ValueError("Cannot generate from an empty prompt (no tokens)")
        if truncated:
            logging.warning(
                "Generation: %d prompt encoding(s) longer than %d tokens were cut from the left "
                "(largest bucket %d minus max_new_tokens %d).",
                truncated, room, self.lengths[-1], max_new_tokens,
            )
        longest = [max(len(ids) for ids in per_member) + max_new_tokens for per_member in encoded]
        results: list[GenerationResult | None] = [None] * len(prompts)
        progress = Progress(len(prompts), "generating", unit="prompts",
                            enabled=self.show_progress)
        for bucket, rows, batch in plan_batches(longest, self.lengths, self.tokens_per_batch,
                                                pad_rows=True):
            for index, result in zip(batch, self._generate_batch(
                [encoded[i] for i in batch], batch, rows, bucket, max_new_tokens,
                until, sampling, seed,
            )):
                results[index] = result
            progress.update(len(batch))
        progress.close()
        return results  # type: ignore[return-value]

    def _generate_batch(self, encoded, indices, rows, bucket, max_new_tokens, until,
                        sampling, seed) -> list[GenerationResult]:
        n_real = len(encoded)
        # The prefill writes all prompt tokens but the last; the loop feeds the last one.
        prefill_len = bucket_length(
            max(1, max(len(ids) - 1 for e in encoded for ids in e)), self.lengths
        )
        input_ids, masks, caches, histories, history_masks = [], [], [], [], []
        for m, model in enumerate(self.models):
            ids = np.full((rows, prefill_len), model.pad_id, np.int32)
            mask = np.zeros((rows, prefill_len), np.int32)
            # Expansion looks back up to `max_length` tokens; keep that much history.
            window = model.expansion.max_length if model.expansion is not None else 1
            history = np.full((rows, window), model.pad_id, np.int32)
            history_mask = np.zeros((rows, window), np.int32)
            for r, per_member in enumerate(encoded):
                seq = per_member[m]
                ids[r, : len(seq) - 1] = seq[:-1]
                mask[r, : len(seq) - 1] = 1
                tail = seq[-window:]
                history[r, window - len(tail):] = tail
                history_mask[r, window - len(tail):] = 1
            input_ids.append(ids)
            masks.append(mask)
            histories.append(jnp.asarray(history))
            history_masks.append(jnp.asarray(history_mask))
            caches.append(init_cache(model.config, rows, bucket, model.module.dtype))
        params = tuple((m.params, m.expansion) for m in self.models)
        caches = self._prefill(params, tuple(input_ids), tuple(masks), tuple(caches))
        base = jax.random.key(seed)
        # Padding rows get ids no request has (they never sample: they start finished).
        row_ids = [int(indices[r]) if r < n_real else 2**31 - 1 - r for r in range(rows)]
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            base, jnp.asarray(row_ids, jnp.uint32)
        )
        buffer = 1 << max(0, math.ceil(math.log2(max_new_tokens)))
        state = DecodeState(
            caches=caches,
            histories=tuple(histories),
            history_masks=tuple(history_masks),
            tokens=jnp.zeros((rows, buffer), jnp.int32),
            num_tokens=jnp.zeros((rows,), jnp.int32),
            finished=jnp.asarray(np.arange(rows) >= n_real),
            hit_eos=jnp.zeros((rows,), bool),
            keys=keys,
            step=jnp.asarray(0, jnp.int32),
        )
        stopped = np.zeros((rows,), bool)
        while True:
            step = int(state.step)
            if step >= max_new_tokens or bool(np.all(np.asarray(state.finished))):
                break
            limit = max_new_tokens if not until else min(step + self.stop_check_every,
                                                         max_new_tokens)
            state = self._decode(params, state, jnp.asarray(limit, jnp.int32),
                                 sampling=sampling)
            if until:
                finished = np.asarray(state.finished)
                texts = self._texts(state, n_real)
                for r in range(n_real):
                    if not finished[r] and cut_at_stop_sequences(texts[r], until)[1]:
                        stopped[r] = True
                if stopped.any():
                    state = state.replace(finished=state.finished | jnp.asarray(stopped))
        texts = self._texts(state, n_real)
        ids = self._output_ids(state, n_real)
        hit_eos = np.asarray(state.hit_eos)
        results = []
        for r in range(n_real):
            text, cut = cut_at_stop_sequences(texts[r], until)
            reason = "stop_sequence" if cut else ("eos" if hit_eos[r] else "length")
            row_ids = self._shortest_stopping_prefix(ids[r], until) if cut else ids[r]
            results.append(GenerationResult(text=text, token_ids=row_ids, finish_reason=reason))
        return results

    def _shortest_stopping_prefix(self, ids: list[int], until: Sequence[str]) -> list[int]:
        """The shortest prefix of `ids` whose decoded text contains a stop sequence
        (binary search: a longer prefix decodes to a longer text)."""
        tokenizer = self.models[0].tokenizer

        def stops(k: int) -> bool:
            return cut_at_stop_sequences(tokenizer.decode(ids[:k], skip_special_tokens=True),
                                         until)[1]

        low, high = 1, len(ids)
        while low < high:
            mid = (low + high) // 2
            if stops(mid):
                high = mid
            else:
                low = mid + 1
        return ids[:high]

    def _output_ids(self, state: DecodeState, n_real: int) -> list[list[int]]:
        tokens = np.asarray(state.tokens)
        counts = np.asarray(state.num_tokens)
        member_ids = self.vocabulary.member_ids[0]
        return [member_ids[tokens[r, : counts[r]]].tolist() for r in range(n_real)]

    def _texts(self, state: DecodeState, n_real: int) -> list[str]:
        tokenizer = self.models[0].tokenizer
        return [
            tokenizer.decode(ids, skip_special_tokens=True)
            for ids in self._output_ids(state, n_real)
        ]

