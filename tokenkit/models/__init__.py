"""Flax decoder-only LMs (Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3, GPT-2, Phi-3) in the HF format.

    config, params = load_pretrained("path/or/org-name")
    model = Transformer(config, dtype=jnp.bfloat16)
    out = model.apply({"params": params}, input_ids, attention_mask)
    save_pretrained("out_dir", config, params, tokenizer)
"""

from tokenkit.models.config import (
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    RopeConfig,
    UnsupportedConfigError,
    from_hf_dict,
    load_config,
    to_hf_dict,
)
from tokenkit.models.lora import LoraConfig, init_lora, merge_lora, trainable_mask
from tokenkit.models import hf_io
from tokenkit.models.hf_io import load_pretrained, resolve_checkpoint_dir, save_pretrained
from tokenkit.models.sharding import (
    DEFAULT_RULES,
    FSDP_RULES,
    batch_shardings,
    cache_shardings,
    logical_axis_rules,
    make_mesh,
    param_logical_axes,
    param_shardings,
    param_specs,
    shard,
    sharding_context,
)
from tokenkit.models.surgery import (
    embedding_matrices,
    padded_size,
    replace_vocabulary,
    trim_vocabulary,
)
from tokenkit.models.transformer import (
    KVCache,
    Transformer,
    TransformerOutput,
    abstract_params,
    embed_tokens,
    init_cache,
    init_params,
    make_transformer,
    unstack_layers,
)

__all__ = [
    "DEFAULT_RULES",
    "FSDP_RULES",
    "KVCache",
    "LoraConfig",
    "ModelConfig",
    "RopeConfig",
    "SUPPORTED_ARCHITECTURES",
    "Transformer",
    "TransformerOutput",
    "UnsupportedConfigError",
    "abstract_params",
    "batch_shardings",
    "cache_shardings",
    "embed_tokens",
    "embedding_matrices",
    "from_hf_dict",
    "init_cache",
    "init_lora",
    "init_params",
    "load_config",
    "load_pretrained",
    "logical_axis_rules",
    "make_mesh",
    "make_transformer",
    "merge_lora",
    "padded_size",
    "param_logical_axes",
    "param_shardings",
    "param_specs",
    "replace_vocabulary",
    "resolve_checkpoint_dir",
    "save_pretrained",
    "shard",
    "sharding_context",
    "to_hf_dict",
    "trainable_mask",
    "trim_vocabulary",
    "unstack_layers",
]
