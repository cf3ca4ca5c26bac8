"""Tiny random HF checkpoints of every supported architecture, built with transformers.

Weights are re-drawn at a scale where every component matters (activations of order one,
norm weights away from 1, soft-capping that bites), so a wrong detail shows up far above
the parity tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: E402  (a test dependency: parity with the PyTorch models)
import transformers  # noqa: E402

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def hf_config(name: str):
    """The transformers config of one tiny test model."""
    t = transformers
    if name == "llama":
        return t.LlamaConfig(**TINY, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if name == "llama3":  # Llama-3.2 style: llama3 rope scaling, tied embeddings
        return t.LlamaConfig(
            **TINY,
            tie_word_embeddings=True,
            mlp_bias=True,  # not Llama-3.2's, but exercises the switch
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    if name == "mistral":
        return t.MistralConfig(**TINY, sliding_window=4)
    if name == "qwen2":  # sliding window on layers >= 1 only
        return t.Qwen2Config(
            **{k: v for k, v in TINY.items() if k != "head_dim"},
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            tie_word_embeddings=True,
        )
    if name == "qwen3":
        return t.Qwen3Config(
            **TINY, tie_word_embeddings=False, rope_theta=1_000_000.0, attention_bias=True
        )
    if name == "gemma2":
        return t.Gemma2Config(
            **TINY,
            sliding_window=4,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=3.0,
        )
    if name == "gemma3":
        return t.Gemma3TextConfig(
            **TINY,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=8,
            attn_logit_softcapping=2.0,  # transformers' Gemma3 ignores it; so must we
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        )
    if name == "gpt2":
        return t.GPT2Config(
            vocab_size=97, n_embd=32, n_inner=48, n_layer=3, n_head=4, n_positions=64,
            bos_token_id=1, eos_token_id=2, layer_norm_epsilon=1e-5,
        )
    if name == "phi3":  # plain RoPE, every layer windowed (Phi-3-mini-4k style)
        return t.Phi3Config(
            **{k: v for k, v in TINY.items() if k != "head_dim"},
            sliding_window=4, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    if name == "phi3_longrope":  # Phi-3-128k's LongRoPE, Phi-4-mini's partial rotary + tying
        return t.Phi3Config(
            **{k: v for k, v in TINY.items() if k != "head_dim"},
            original_max_position_embeddings=LONGROPE_ORIGINAL,
            partial_rotary_factor=0.75,  # 6 of 8 dims rotate: 3 factors
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0, 1.3, 2.0],
                "long_factor": [1.5, 4.0, 9.0],
            },
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    raise KeyError(name)


# LongRoPE switches to its long factors for sequences longer than this.
LONGROPE_ORIGINAL = 8
MODEL_NAMES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "phi3")


def build_hf_model(name: str, seed: int = 0):
    """A tiny transformers CausalLM with weights at an informative scale, in eval mode."""
    config = hf_config(name)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gemma = config.model_type.startswith("gemma")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                # GPT-2's Conv1D kernels are [in, out]; nn.Linear's [out, in].
                fan_in = p.shape[0] if ".c_" in pname else p.shape[-1]
                embedding = any(k in pname for k in ("embed_tokens", "wte", "wpe"))
                p.normal_(0.0, 1.0 if embedding else fan_in ** -0.5)
            elif "norm" in pname or (".ln_" in pname and pname.endswith("weight")):
                p.normal_(0.0, 0.2)
                if not gemma:
                    p.add_(1.0)
            else:
                p.normal_(0.0, 0.2)
    return model.eval()


def right_padded_batch(vocab: int, lengths, total: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def hf_forward(model, ids: np.ndarray, mask: np.ndarray):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
        )
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> (directory of the saved HF checkpoint, the torch model); built on demand."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = build_hf_model(name)
            path = tmp_path_factory.mktemp(f"hf_{name}")
            model.save_pretrained(path)
            cache[name] = (path, model)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_hf():
    """The helpers above, as a fixture (test modules cannot import a conftest reliably)."""
    import types

    return types.SimpleNamespace(
        MODEL_NAMES=MODEL_NAMES,
        LONGROPE_ORIGINAL=LONGROPE_ORIGINAL,
        hf_config=hf_config,
        build_hf_model=build_hf_model,
        right_padded_batch=right_padded_batch,
        hf_forward=hf_forward,
    )
