"""The lm-eval backend: `TokenkitLM`, registered as `--model tokenkit`.

    python -m tokenkit.lm_eval --model tokenkit \\
        --model_args pretrained=DIR,tokenizer=PATH:source=Llama3,lengths=128;256 \\
        --tasks tiny_world_mc --include_path data/eval_tasks

or, from Python, after `import tokenkit.evaluation.lm` (which registers the name):

    lm_eval.simple_evaluate(model="tokenkit", model_args={...}, tasks=[...])
    lm_eval.simple_evaluate(model=TokenkitLM(models=[eval_model]), tasks=[...])

Requests, as lm-eval defines them:

- `loglikelihood` `(context, continuation)` -> `(logprob, is_greedy)`. As in lm-eval's
  Hugging Face backend, trailing whitespace of the context moves to the continuation,
  `context + continuation` is encoded whole and the continuation's ids are what follows
  the context's own encoding; an empty context is conditioned on bos (or eos). The
  context starts with bos when `add_bos`. `is_greedy`: every continuation token is the
  argmax of its prediction.
- `loglikelihood_rolling` `(text,)` -> `(logprob,)`, windows of the largest bucket
  length made by lm-eval's `get_rolling_token_windows`.
- `generate_until` `(context, gen_kwargs)` -> text. The context is wrapped by
  `chat_template_mode` (e.g. `surround_instruct`: one user turn, then an assistant
  header), unless it already holds slot markers (lm-eval's `--apply_chat_template`,
  rendered by `apply_chat_template` below). `gen_kwargs`: `until`, `max_gen_toks`,
  `do_sample`, `temperature`, `top_k`, `top_p`; the reply is cut at the first stop
  sequence and stripped of surrounding whitespace (as upstream).

Requests are sorted by length and packed into batches of up to `tokens_per_batch // L`
rows of a bucket length `L`: for log-likelihoods `scoring.default_buckets` up to the
largest of `lengths` (padding adds less than a quarter of a request's length), for
generation `lengths` itself (a KV cache per bucket); each shape compiles once. With one model, scoring
runs through `tokenkit.evaluation.scoring`; with several (`models=[...]`), they run in
lockstep as a token-level ensemble (`tokenkit.evaluation.ensemble`); members with
different tokenizers (`mined_mappings`) score and generate the first member's (the
pivot's) tokens, each other member reading them as its MinED-mapped ids.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_eval_utils

from tokenkit import families, prompts
from tokenkit.evaluation import ensemble, generate, scoring
from tokenkit.evaluation.model import EvalModel, load_eval_model
from tokenkit.models.side import Forward
from tokenkit.progress import Progress

# model_args spellings of the upstream option names -> our keyword arguments.
ARG_ALIASES: Mapping[str, str] = {
    "model.pretrained_model_name_or_path": "pretrained",
    "model.tokenizer_name": "tokenizer",
    "expand_model.pretrained_model_name_or_path": "expand_model",
    "expand_model.tokenizer_name": "expand_tokenizer",
}
# Passed by lm-eval's command line to every backend; batching here is `tokens_per_batch`.
_HARNESS_ARGS = ("batch_size", "max_batch_size", "device")


def parse_lengths(value: int | str | Iterable[int]) -> tuple[int, ...]:
    """Bucket lengths from model_args (`128;256;512`, `128:256` or `128 256`; commas
    separate model_args) or from Python / Gin (a list)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    if isinstance(value, str):
        parts = [p for p in re.split(r"[;: ]+", value.strip()) if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"lengths={value!r}: expected integers separated by ';', ':' or spaces "
                "(e.g. lengths=128;256;512)"
            ) from None
    return tuple(int(v) for v in value)


def has_slot_markers(text: str) -> bool:
    return any(marker in text for marker in families.SLOT_MARKERS)


def _ensemble_score(forwards, vocabulary, strategy, params, rows, labels):
    """Per-prediction log-probs and greedy flags `[R, W]` of the members' packed rows
    (`scoring.pack_rows`), combined."""
    logits = [
        forward(p, ids, mask, positions=positions, segment_ids=segments, expansion=expansion,
                expanded_input_ids=expanded, logit_positions=logit_positions).logits
        for forward, (p, expansion), (ids, mask, positions, segments, expanded, logit_positions)
        in zip(forwards, params, rows)
    ]
    return ensemble.aligned_logprobs(logits, labels, vocabulary, strategy)


_COMPILED: dict[tuple, Callable] = {}


def compiled_ensemble_score(
    forwards: tuple[Forward, ...], vocabulary: ensemble.UnifiedVocabulary, strategy: str
) -> Callable:
    """The jitted lockstep scorer of a set of members (shared across `TokenkitLM`s of the
    same models, whatever their params)."""
    key = (forwards, vocabulary.fingerprint, strategy)
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(functools.partial(_ensemble_score, forwards, vocabulary, strategy))
    return _COMPILED[key]


@register_model("tokenkit")
class TokenkitLM(LM):
    """lm-eval `LM` over tokenkit models (one, or an ensemble in lockstep).

    Args:
      pretrained, tokenizer: checkpoint directory / hub id and tokenizer spec (the
        `--model_args` route); or give `models`.
      models: ready `EvalModel`s (the Python / trainer route); several make an ensemble.
      lengths: generation bucket lengths, ascending; the largest is the longest sequence
        scored or generated (longer inputs lose tokens from the left, counted in the
        log). Log-likelihoods use the finer `score_buckets` up to it.
      tokens_per_batch: rows x bucket length of a batch.
      add_bos: put bos before texts (with `pretrained`; `models` carry their own).
      chat_template_mode: how generation prompts are wrapped (`prompts.CHAT_TEMPLATE_MODES`),
        or None to use them as they are.
      combine_strategy: how an ensemble's distributions combine (`ensemble.COMBINE_STRATEGIES`).
      mined_mappings: members with different tokenizers: None for the first (the pivot),
        a MinED mapping (pivot ids -> the member's ids) for every other member; they then
        step through the pivot's tokens (`ensemble` module docstring).
      do_sample, temperature, top_k, top_p: sampling defaults for requests that do not set them.
      max_gen_toks: default generation budget.
      seed: sampling seed.
      expand_model, expand_tokenizer: input-id expansion of a byte-level model
        (`expand_model.pretrained_model_name_or_path` / `expand_model.tokenizer_name` in
        model_args, as upstream).
      dtype, param_dtype: compute and parameter dtypes when loading.
      stop_check_every: decode steps between stop-sequence checks.
      show_progress: log progress lines.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        *,
        models: EvalModel | Sequence[EvalModel] | None = None,
        lengths: int | str | Sequence[int] = generate.DEFAULT_LENGTHS,
        tokens_per_batch: int = 4096,
        add_bos: bool = True,
        chat_template_mode: str | None = "surround_instruct",
        combine_strategy: str = "mean_prob",
        mined_mappings: Sequence[np.ndarray | None] | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_gen_toks: int = 256,
        seed: int = 0,
        expand_model: str | None = None,
        expand_tokenizer: str | None = None,
        dtype: str = "float32",
        param_dtype: str | None = "float32",
        stop_check_every: int = 16,
        show_progress: bool = True,
        **harness_args: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(harness_args) - set(_HARNESS_ARGS))
        if unknown:
            raise TypeError(
                f"TokenkitLM got unknown argument(s) {unknown}; valid: pretrained, tokenizer, "
                "models, lengths, tokens_per_batch, add_bos, chat_template_mode, "
                "combine_strategy, mined_mappings, do_sample, temperature, top_k, top_p, "
                "max_gen_toks, seed, "
                "expand_model(.pretrained_model_name_or_path), "
                "expand_tokenizer (expand_model.tokenizer_name), dtype, param_dtype, "
                "stop_check_every, show_progress"
            )
        ignored = {k: v for k, v in harness_args.items() if v not in (None, 1, "1")}
        if ignored:
            logging.info(
                "TokenkitLM ignores %s: batches hold tokens_per_batch tokens and JAX places "
                "the computation.", ignored,
            )
        if models is None:
            if pretrained is None or tokenizer is None:
                raise ValueError(
                    "TokenkitLM needs pretrained=DIR and tokenizer=SPEC (or models=[...])"
                )
            models = [
                load_eval_model(
                    pretrained, tokenizer, add_bos=add_bos, dtype=dtype,
                    param_dtype=param_dtype, expand_model=expand_model,
                    expand_tokenizer=expand_tokenizer,
                )
            ]
        elif pretrained is not None or tokenizer is not None:
            raise ValueError("Give either pretrained/tokenizer or models, not both")
        self.models: tuple[EvalModel, ...] = (
            (models,) if isinstance(models, EvalModel) else tuple(models)
        )
        if not self.models:
            raise ValueError("TokenkitLM needs at least one model")
        if chat_template_mode in ("", "none", "None"):
            chat_template_mode = None
        if chat_template_mode is not None and chat_template_mode not in prompts.CHAT_TEMPLATE_MODES:
            raise ValueError(
                f"Unknown chat_template_mode {chat_template_mode!r}; valid modes: "
                f"{', '.join(prompts.CHAT_TEMPLATE_MODES)} (or None)"
            )
        self.chat_template_mode = chat_template_mode
        ensemble.check_combine_strategy(combine_strategy)
        self.combine_strategy = combine_strategy
        max_length = min(m.config.max_position_embeddings for m in self.models)
        self.lengths = generate.check_lengths(parse_lengths(lengths), max_length)
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        self.tokens_per_batch = int(tokens_per_batch)
        self.default_sampling = generate.SamplingConfig(
            do_sample=bool(do_sample), temperature=float(temperature), top_k=int(top_k),
            top_p=float(top_p),
        )
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.show_progress = show_progress
        self.vocabulary = ensemble.UnifiedVocabulary.build(
            [m.tokenizer for m in self.models], [m.stop_ids for m in self.models],
            mined_mappings,
        )
        self.generator = generate.Generator(
            self.models,
            lengths=self.lengths,
            tokens_per_batch=self.tokens_per_batch,
            combine_strategy=combine_strategy,
            stop_check_every=stop_check_every,
            vocabulary=self.vocabulary,
            show_progress=show_progress,
        )
        self._ensemble_score = compiled_ensemble_score(
            tuple(m.forward for m in self.models), self.vocabulary, combine_strategy
        )
        self._inverse = [
            self.vocabulary.inverse(i, m.config.vocab_size) for i, m in enumerate(self.models)
        ]

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> TokenkitLM:
        """From `--model_args key=value,...`; upstream's dotted names are accepted."""
        args = lm_eval_utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.create_from_arg_obj(args, extra)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> TokenkitLM:
        args = {ARG_ALIASES.get(k, k): v for k, v in arg_dict.items()}
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    # ------------------------------------------------------------------ properties

    @property
    def score_buckets(self) -> tuple[int, ...]:
        """Lengths that log-likelihood requests are padded to: `scoring.default_buckets`
        up to the largest of `lengths` (finer than the generation buckets: a forward
        pass costs what its padded tokens cost, and compiles are cached)."""
        return scoring.default_buckets(self.lengths[-1])

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer spec(s), for lm-eval's request cache keys."""
        return "|".join(str(m.tokenizer.spec or m.tokenizer) for m in self.models)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """A name for the template (lm-eval records it): slot-marker prompts filled per
        family by `tokenkit.prompts`, not a Jinja template."""
        if chat_template is False or chat_template is None:
            return None
        return "tokenkit-slot-markers:" + ",".join(m.tokenizer.family.name for m in self.models)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The conversation as a slot-marker prompt (filled by each model's family)."""
        return prompts.preprocess_messages(chat_history, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ encoding

    def _encode_pair(self, model: EvalModel, context: str, continuation: str) -> tuple[list[int], int]:
        """(ids, index of the first continuation token) of one loglikelihood request."""
        if context == "":
            cont = model.encode(continuation, bos=False)
            return [model.prefix_id] + cont, 1
        context, continuation = self._split_context(context, continuation)
        whole = model.encode(context + continuation)
        ctx = model.encode(context)
        return ctx + whole[len(ctx):], len(ctx)

    def _split_context(self, context: str, continuation: str) -> tuple[str, str]:
        """lm-eval's split: trailing whitespace of the context belongs to the continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            return context[:-spaces], context[-spaces:] + continuation
        return context, continuation

    def _to_member(self, member: int, pivot_ids: Sequence[int]) -> list[int]:
        """Pivot ids as member `member` reads them in a pivot ensemble: each regular token
        as its MinED-mapped token, the pivot's prefix (bos) as the member's own.

        Raises:
          ValueError: a token other than the prefix is not in the unified vocabulary
            (a special token of the pivot), naming it.
        """
        pivot = self.models[0]
        if member == 0:
            return list(pivot_ids)
        unified = self._inverse[0][np.asarray(pivot_ids, np.int64)]
        mapped = self.vocabulary.member_ids[member]
        out = []
        for pivot_id, u in zip(pivot_ids, unified):
            if pivot_id == pivot.prefix_id:
                out.append(self.models[member].prefix_id)
            elif u < 0:
                token = pivot.tokenizer.convert_ids_to_tokens([int(pivot_id)])[0]
                raise ValueError(
                    f"The pivot {pivot.name}'s token {token!r} (id {int(pivot_id)}) is not in "
                    "the ensemble's pivot vocabulary (a special token) and has no MinED-mapped "
                    f"token for {self.models[member].name}."
                )
            else:
                out.append(int(mapped[u]))
        return out

    def _encode_pivot_pair(self, context: str, continuation: str) -> list[tuple[list[int], int]]:
        """One loglikelihood request of a pivot ensemble, per member `(ids, first scored
        index)`: each member reads the context in its own tokenization, then the pivot's
        tokens of the continuation (mapped), which are the tokens scored."""
        pivot_ids, start = self._encode_pair(self.models[0], context, continuation)
        continuation_ids = pivot_ids[start:]
        context, _ = self._split_context(context, continuation)
        items = [(pivot_ids, start)]
        for m, model in enumerate(self.models[1:], start=1):
            ctx = [model.prefix_id] if context == "" else model.encode(context)
            items.append((ctx + self._to_member(m, continuation_ids), len(ctx)))
        return items

    def _fit(self, ids: list[int], start: int) -> tuple[list[int], int, int]:
        """Left-truncates to the largest bucket; returns (ids, start, scored tokens lost)."""
        limit = self.lengths[-1]
        if len(ids) <= limit:
            return ids, start, 0
        cut = len(ids) - limit
        # Old index `cut` becomes index 0, which has no prediction.
        return ids[cut:], max(1, start - cut), max(0, cut + 1 - start)

    # ------------------------------------------------------------------ scoring

    def _score(self, items: list[list[tuple[list[int], int]]], what: str) -> list[tuple[float, bool]]:
        """Scores items (one `(ids, first scored index)` per model) -> (logprob, greedy)."""
        fitted, truncated, lost = [], 0, 0
        for per_model in items:
            row = []
            for ids, start in per_model:
                new_ids, new_start, n_lost = self._fit(ids, start)
                truncated += len(new_ids) < len(ids)
                lost += n_lost
                row.append((new_ids, new_start))
            fitted.append(row)
        if truncated:
            logging.warning(
                "%s: %d sequence(s) longer than %d tokens lost tokens from the left (%d of "
                "them scored tokens).", what, truncated, self.lengths[-1], lost,
            )
        if len(self.models) == 1:
            return self._score_single([row[0] for row in fitted], what)
        return self._score_ensemble(fitted, what)

    def _score_single(self, items: list[tuple[list[int], int]], what: str) -> list[tuple[float, bool]]:
        logging.info("%s: %d requests.", what, len(items))
        scores = scoring.score_sequences(
            self.models[0],
            [ids for ids, _ in items],
            [start for _, start in items],
            tokens_per_batch=self.tokens_per_batch,
            buckets=self.score_buckets,
            show_progress=self.show_progress,
        )
        return [(score.loglik, score.is_greedy) for score in scores]

    def _unified_labels(self, per_model: list[tuple[list[int], int]]) -> list[int]:
        """The scored tokens as unified indices; every model must have the same ones
        (in a pivot ensemble they are the pivot's, by construction)."""
        ids0, start0 = per_model[0]
        spelled0 = self.models[0].tokenizer.convert_ids_to_tokens(ids0[start0:])
        if not self.vocabulary.pivot:
            for model, (ids, start) in zip(self.models[1:], per_model[1:]):
                tokens = model.tokenizer.convert_ids_to_tokens(ids[start:])
                if tokens != spelled0:
                    raise ValueError(
                        f"Ensemble members tokenize a continuation differently: "
                        f"{self.models[0].name} gives {spelled0}, {model.name} gives {tokens}; "
                        "members of a token-level ensemble must share a tokenizer (transfer "
                        "them to one first)."
                    )
        labels = self._inverse[0][np.asarray(ids0[start0:], np.int64)].tolist()
        if any(label < 0 for label in labels):
            missing = [t for t, lab in zip(spelled0, labels) if lab < 0]
            raise ValueError(
                f"Continuation tokens {missing} are not in the ensemble's unified vocabulary "
                "(special tokens, or tokens some member lacks) and cannot be scored."
            )
        return labels

    def _score_ensemble(
        self, items: list[list[tuple[list[int], int]]], what: str
    ) -> list[tuple[float, bool]]:
        """The members' rows in lockstep, packed as `scoring` packs one model's: the
        choices of a question share its context when they do under every member."""
        labels = [self._unified_labels(row) for row in items]
        sequences = [[row[m][0] for row in items] for m in range(len(self.models))]
        starts = [[row[m][1] for row in items] for m in range(len(self.models))]
        for i, row in enumerate(items):
            for m, (seq, start) in enumerate(row):
                if len(seq) - start != len(labels[i]):
                    raise ValueError(
                        f"{what}: request {i} has {len(labels[i])} scored tokens for the "
                        f"first member and {len(seq) - start} for {self.models[m].name} "
                        f"(truncated differently at {self.lengths[-1]} tokens: raise lengths)."
                    )
        params = tuple((m.params, m.expansion) for m in self.models)
        loglik = np.zeros(len(items), np.float64)
        greedy = np.zeros(len(items), bool)
        progress = Progress(len(items), what, unit="requests", enabled=self.show_progress)
        for packed in scoring.packed_batches(self.models, sequences, starts, self.score_buckets,
                                             self.tokens_per_batch):
            # Every member scores the same number of tokens per request (checked above), so
            # their heads hold each request at the same place.
            spans = packed[0].spans
            unified = np.zeros(packed[0].targets.shape, np.int32)
            for i, r, first, end in spans:
                unified[r, first:end] = labels[i]
            member_rows = tuple((p.input_ids, p.attention_mask, p.positions, p.segment_ids,
                                 p.expanded_input_ids, p.logit_positions) for p in packed)
            logp, is_greedy = jax.device_get(self._ensemble_score(params, member_rows, unified))
            scoring.add_span_scores(spans, logp, is_greedy, loglik, greedy)
            progress.update(len(spans))
        progress.close()
        return [(float(lp), bool(g)) for lp, g in zip(loglik, greedy)]

    # ------------------------------------------------------------------ lm-eval API

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.vocabulary.pivot:
            items = [self._encode_pivot_pair(*req.args) for req in requests]
        else:
            items = [
                [self._encode_pair(m, *req.args) for m in self.models] for req in requests
            ]
        results = self._score(items, "loglikelihood")
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        items: list[list[tuple[list[int], int]]] = []
        owners: list[int] = []
        max_seq_len = self.lengths[-1] - 1
        for r, req in enumerate(requests):
            (text,) = req.args
            per_model_windows = []
            # A pivot ensemble steps through the pivot's windows (mapped for the others).
            for m in self.models[:1] if self.vocabulary.pivot else self.models:
                tokens = m.encode(text, bos=False)
                windows = [
                    lm_eval_utils.make_disjoint_window(w)
                    for w in lm_eval_utils.get_rolling_token_windows(
                        token_list=tokens, prefix_token=m.prefix_id,
                        max_seq_len=max_seq_len, context_len=1,
                    )
                ]
                per_model_windows.append([(ctx + pred, len(ctx)) for ctx, pred in windows])
            if self.vocabulary.pivot:
                per_model_windows += [
                    [(self._to_member(m, ids), start) for ids, start in per_model_windows[0]]
                    for m in range(1, len(self.models))
                ]
            counts = {len(w) for w in per_model_windows}
            if len(counts) != 1:
                raise ValueError(
                    f"Ensemble members split a text into different numbers of windows {counts}; "
                    "they must share a tokenizer."
                )
            for w in range(counts.pop()):
                items.append([windows[w] for windows in per_model_windows])
                owners.append(r)
        scores = self._score(items, "loglikelihood_rolling") if items else []
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _prompt(self, context: str) -> str:
        if self.chat_template_mode is None or has_slot_markers(context):
            return context
        return prompts.preprocess_prompt(context, self.chat_template_mode)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            unknown = sorted(set(gen_kwargs) - set(generate.GEN_KWARGS))
            if unknown:
                logging.warning(
                    "generate_until ignores gen_kwargs %s (understood: %s)",
                    {k: gen_kwargs[k] for k in unknown}, ", ".join(generate.GEN_KWARGS),
                )
            until = gen_kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            sampling = generate.sampling_from_gen_kwargs(gen_kwargs, self.default_sampling)
            logging.info(
                "Generating %d replies: max %d new tokens, until %s, %s",
                len(indices), max_new, until, sampling,
            )
            results = self.generator.generate(
                [self._prompt(requests[i].args[0]) for i in indices],
                max_new_tokens=max_new,
                until=until,
                sampling=sampling,
                seed=self.seed,
            )
            for i, result in zip(indices, results):
                outputs[i] = result.text.strip()
                self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
        return outputs
