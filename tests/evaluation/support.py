"""Tiny random models on the tiny-world tokenizers and reference computations, for the
evaluation tests.

Weights are scaled up from the usual N(0, 0.02) so the next-token distributions are
peaked: greedy choices then have clear margins, and a wrong position or a missing bos
changes log-likelihoods by far more than float noise. Vocabularies are padded past the
tokenizer's size, so the masking of padding rows is exercised everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import ModelConfig, Transformer, init_params

REPO = Path(__file__).resolve().parents[2]
TINY_TOKENIZERS_DIR = REPO / "data" / "tokenizers"
LLAMA_SPEC = f"{TINY_TOKENIZERS_DIR / 'llama3_bpe'}:source=Llama3"
QWEN_SPEC = f"{TINY_TOKENIZERS_DIR / 'qwen2_bpe'}:source=Qwen2"
# The same Qwen2 BPE with Llama3's special tokens and template (a model transferred to
# the Qwen2 tokenizer from Llama3 keeps its own chat format).
QWEN_AS_LLAMA_SPEC = f"{TINY_TOKENIZERS_DIR / 'qwen2_bpe'}:source=Qwen2:target=Llama3"


def tiny_config(vocab_size: int, architecture: str = "llama", **overrides) -> ModelConfig:
    fields = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512,
    )
    fields.update(overrides)
    return ModelConfig(architecture, **fields)


def random_params(config: ModelConfig, seed: int, scale: float = 6.0) -> dict:
    """`init_params` with matrices scaled by `scale` (peaked distributions)."""
    params = init_params(Transformer(config), seed)
    return jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, params)


def make_model(spec: str, seed: int, *, add_bos: bool = True, padding: int = 64,
               **overrides) -> EvalModel:
    tokenizer = load_byteify_tokenizer(spec)
    config = tiny_config(len(tokenizer) + padding, **overrides)
    return EvalModel.build(config, random_params(config, seed), tokenizer, add_bos=add_bos,
                            name=f"tiny-{seed}")


_FORWARDS: dict[int, object] = {}
REFERENCE_LENGTH = 128


def forward_logprobs(model: EvalModel, ids: list[int]) -> np.ndarray:
    """log-softmax `[T, V]` of one sequence, by a plain forward pass without cache.

    The sequence is right-padded to `REFERENCE_LENGTH` so the jitted forward compiles
    once per model (right padding leaves the real positions unchanged).
    """
    if len(ids) > REFERENCE_LENGTH:
        raise ValueError(f"reference sequences are at most {REFERENCE_LENGTH} tokens")
    forward = _FORWARDS.get(id(model))
    if forward is None:
        forward = _FORWARDS[id(model)] = jax.jit(
            lambda p, x, m, e: jax.nn.log_softmax(model.forward(p, x, m, expansion=e).logits, -1)
        )
    padded = np.zeros((1, REFERENCE_LENGTH), np.int32)
    mask = np.zeros((1, REFERENCE_LENGTH), np.int32)
    padded[0, : len(ids)] = ids
    mask[0, : len(ids)] = 1
    logp = forward(model.params, jnp.asarray(padded), jnp.asarray(mask), model.expansion)
    return np.asarray(logp[0, : len(ids)])


def sequence_logprob(model: EvalModel, ids: list[int], start: int) -> tuple[float, bool]:
    """Sum of log p(ids[k] | ids[:k]) for k >= start, and whether each was the argmax."""
    logp = forward_logprobs(model, ids)
    total, greedy = 0.0, True
    for k in range(start, len(ids)):
        total += float(logp[k - 1, ids[k]])
        greedy &= int(np.argmax(logp[k - 1])) == ids[k]
    return total, greedy


def naive_greedy(model: EvalModel, ids: list[int], max_new: int,
                 stop_ids: tuple[int, ...] | None = None) -> list[int]:
    """Greedy decoding by a full forward pass per token (no cache): the reference."""
    stop = model.stop_ids if stop_ids is None else stop_ids
    ids = list(ids)
    out: list[int] = []
    for _ in range(max_new):
        token = int(np.argmax(forward_logprobs(model, ids)[-1]))
        if token in stop:
            break
        out.append(token)
        ids.append(token)
    return out


def with_params(model: EvalModel, params) -> EvalModel:
    return dataclasses.replace(model, params=params)
