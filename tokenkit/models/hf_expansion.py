'''Input-id expansion inside a Hugging Face checkpoint, readable by plain transformers.

The HF format has no place for a byte-level student's input-id expansion
(`tokenkit.models.expand`): the old model's embedding table and the lookup from byte
runs to old token ids. An export with expansion therefore carries, next to the usual
files (`write_expansion`):

- `model.safetensors` (or its shards) also holds `expand_embed_tokens.weight` (the
  table) and `expansion.*` (the lookup's arrays: each new token's bytes, each old
  token's bytes and id, sorted by hash as `Expansion` keeps them);
- `config.json` has `model_type` `tokenkit_expanded`, the original one in
  `tokenkit_base_model_type`, the lookup's sizes in `expand_*`, and an `auto_map`
  naming the classes of
- `modeling_tokenkit_expanded.py`, a small PyTorch file: a config class and a causal LM
  class deriving from the family's own transformers classes, which add
  `expand_embed_tokens(expanded ids)` to the token embeddings (before any embedding
  scale, as our model core does) and compute the expanded ids with the same rule as
  `Expansion.apply`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
  gives our logits, also when generating with a KV cache.

Without `trust_remote_code` transformers refuses the unknown model type instead of
silently dropping the expansion. tokenkit itself reads such a directory back with
`read_expansion` (the base config, the table and an `Expansion`).
'''

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tokenkit.models.expand import Expansion

MODEL_TYPE = "tokenkit_expanded"
MODELING_FILE = "modeling_tokenkit_expanded.py"
TABLE_TENSOR = "expand_embed_tokens.weight"
PREFIX = "expansion."
# Expansion array -> dtype on disk (hash and packed bytes as int64: transformers and
# torch handle unsigned 32-bit tensors poorly).
_ARRAYS = {
    "bytes_of_id": np.int32,
    "length_of_id": np.int32,
    "direct_of_id": np.int32,
    "key_hash": np.int64,
    "key_length": np.int32,
    "key_words": np.int64,
    "key_old_id": np.int32,
}


def expansion_tensors(expansion: Expansion, table: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors an export with `expansion` adds to its safetensors files."""
    out = {TABLE_TENSOR: np.asarray(table)}
    for name, dtype in _ARRAYS.items():
        out[PREFIX + name] = np.ascontiguousarray(np.asarray(getattr(expansion, name)).astype(dtype))
    return out


def expansion_config(expansion: Expansion, table_rows: int, base: Mapping[str, Any]) -> dict[str, Any]:
    """`base` (an HF config.json dict) turned into the expanded export's config.json."""
    return {
        **base,
        "model_type": MODEL_TYPE,
        "architectures": ["TokenkitExpandedForCausalLM"],
        "tokenkit_base_model_type": base["model_type"],
        "tokenkit_base_architecture": base["architectures"][0],
        "auto_map": {
            "AutoConfig": f"{MODELING_FILE[:-3]}.TokenkitExpandedConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.TokenkitExpandedForCausalLM",
        },
        "expand_table_rows": int(table_rows),
        "expand_vocab_size": int(np.shape(expansion.bytes_of_id)[0]),
        "expand_num_keys": int(np.shape(expansion.key_hash)[0]),
        "expand_none_id": int(expansion.none_id),
        "expand_max_length": int(expansion.max_length),
        "expand_max_group": int(expansion.max_group),
        "expand_hash_bits": int(expansion.hash_bits),
    }


def base_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The family's own config.json dict of an expanded export (others pass through)."""
    if config.get("model_type") != MODEL_TYPE:
        return dict(config)
    out = {k: v for k, v in config.items()
           if not k.startswith(("expand_", "tokenkit_base_")) and k != "auto_map"}
    out["model_type"] = config["tokenkit_base_model_type"]
    out["architectures"] = [config["tokenkit_base_architecture"]]
    return out


def write_expansion(directory: str | os.PathLike, expansion: Expansion, table_rows: int) -> None:
    """Turns the HF checkpoint in `directory` (whose safetensors already hold the
    expansion tensors) into an expanded export: config.json and the modeling file."""
    config_path = os.path.join(directory, "config.json")
    with open(config_path) as f:
        base = json.load(f)
    config = expansion_config(expansion, table_rows, base)
    with open(config_path, "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    source = MODELING_SOURCE.replace("@BASE_MODEL_TYPE@", base["model_type"]).replace(
        "@BASE_CLASS@", base["architectures"][0])
    with open(os.path.join(directory, MODELING_FILE), "w") as f:
        f.write(source)


def read_expansion(config: Mapping[str, Any], tensors: Mapping[str, Any]) -> tuple[np.ndarray, Expansion]:
    """The table and the `Expansion` stored in an expanded export (`config`: its
    config.json dict; `tensors`: name -> array, at least the expansion's)."""
    arrays = {name: np.asarray(tensors[PREFIX + name]) for name in _ARRAYS}
    arrays["key_hash"] = arrays["key_hash"].astype(np.uint32)
    arrays["key_words"] = arrays["key_words"].astype(np.uint32)
    expansion = Expansion(
        **arrays,
        none_id=int(config["expand_none_id"]),
        max_length=int(config["expand_max_length"]),
        max_group=int(config["expand_max_group"]),
        hash_bits=int(config["expand_hash_bits"]),
    )
    return np.asarray(tensors[TABLE_TENSOR]), expansion


def load_expansion(directory: str | os.PathLike) -> tuple[np.ndarray, Expansion] | None:
    """The table and `Expansion` of the HF checkpoint in `directory`, or None when it is
    not an expanded export."""
    from safetensors import safe_open

    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != MODEL_TYPE:
        return None
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = json.load(f)["weight_map"]
    else:
        files = {name: "model.safetensors" for name in tensor_names()}
    tensors = {}
    for name in tensor_names():
        with safe_open(os.path.join(directory, files[name]), framework="numpy") as f:
            tensors[name] = f.get_tensor(name)
    return read_expansion(config, tensors)


def tensor_names() -> tuple[str, ...]:
    """Names of every tensor `expansion_tensors` writes."""
    return (TABLE_TENSOR,) + tuple(PREFIX + name for name in _ARRAYS)


# The modeling file written into expanded exports (`@...@` filled in by `write_expansion`).
# It must stay self-contained: transformers imports it alone, from the export directory.
MODELING_SOURCE = '''"""Input-id expansion for a byte-level model exported by tokenkit.

Each position's input embedding is the model's own token embedding plus a row of
`expand_embed_tokens`: the embedding, in the model this one was transferred from, of the
longest old token whose bytes end at this position's last byte (looking back at most
`expand_max_length` bytes over consecutive text tokens; special tokens map to their old
counterparts; padding and positions without a match to a zero row). Load with
`AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)`.
"""

import torch
import transformers
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

BASE_MODEL_TYPE = "@BASE_MODEL_TYPE@"
BASE_CLASS = "@BASE_CLASS@"


class TokenkitExpandedConfig(CONFIG_MAPPING[BASE_MODEL_TYPE]):
    model_type = "tokenkit_expanded"


class TokenkitExpansion(nn.Module):
    """The lookup from new (byte-level) ids to old ids; its arrays load from the checkpoint."""

    def __init__(self, config):
        super().__init__()
        vocab, width, keys = config.expand_vocab_size, config.expand_max_length, config.expand_num_keys
        words = -(-width // 4)
        for name, shape, dtype in (
            ("bytes_of_id", (vocab, width), torch.int32),
            ("length_of_id", (vocab,), torch.int32),
            ("direct_of_id", (vocab,), torch.int32),
            ("key_hash", (keys,), torch.int64),
            ("key_length", (keys,), torch.int32),
            ("key_words", (keys, words), torch.int64),
            ("key_old_id", (keys,), torch.int32),
        ):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.none_id = config.expand_none_id
        self.max_length = width
        self._table = None

    def _old_ids(self):
        """bytes -> old id; among old tokens with the same bytes the last one stored wins."""
        if self._table is None:
            table = {}
            lengths = self.key_length.tolist()
            words = self.key_words.tolist()
            for length, packed, old_id in zip(lengths, words, self.key_old_id.tolist()):
                if length:
                    last_first = [(packed[k // 4] >> (8 * (k % 4))) & 0xFF for k in range(length)]
                    table[bytes(reversed(last_first))] = old_id
            self._table = table
        return self._table

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None):
        """Old ids `[B, T]` for new ids `[B, T]`."""
        table = self._old_ids()
        vocab = self.length_of_id.shape[0]
        spelled = [bytes(row[:n]) for row, n in zip(self.bytes_of_id.tolist(), self.length_of_id.tolist())]
        direct = self.direct_of_id.tolist()
        ids = input_ids.tolist()
        mask = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in ids]
        out = []
        for row, row_mask in zip(ids, mask):
            run = b""
            expanded = []
            for token, valid in zip(row, row_mask):
                if not valid or not 0 <= token < vocab:
                    run = b""
                    expanded.append(self.none_id)
                    continue
                if not spelled[token]:  # a special token: its old counterpart
                    run = b""
                    expanded.append(direct[token])
                    continue
                run = (run + spelled[token])[-self.max_length:]
                found = self.none_id
                for n in range(len(run), 0, -1):
                    if run[-n:] in table:
                        found = table[run[-n:]]
                        break
                expanded.append(found)
            out.append(expanded)
        return torch.tensor(out, dtype=torch.long, device=input_ids.device)


class TokenkitExpandedForCausalLM(getattr(transformers, BASE_CLASS)):
    config_class = TokenkitExpandedConfig

    def __init__(self, config):
        super().__init__(config)
        self.expand_embed_tokens = nn.Embedding(config.expand_table_rows, config.hidden_size)
        self.expansion = TokenkitExpansion(config)

    def _expanded_embeddings(self, input_ids, expanded_input_ids):
        embed = self.get_input_embeddings()
        extra = self.expand_embed_tokens(expanded_input_ids)
        # Families whose embedding module scales (Gemma 3) scale the sum, as tokenkit does.
        scale = getattr(embed, "embed_scale", None)
        if scale is not None:
            extra = extra * scale.to(extra.dtype)
        return embed(input_ids) + extra.to(embed.weight.dtype)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                expanded_input_ids=None, **kwargs):
        if inputs_embeds is None and input_ids is not None:
            if expanded_input_ids is None:
                expanded_input_ids = self.expansion(input_ids, attention_mask)
            inputs_embeds = self._expanded_embeddings(input_ids, expanded_input_ids)
            input_ids = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        step_ids = inputs.get("input_ids")
        if step_ids is not None and inputs.get("inputs_embeds") is None:
            # The new tokens' expansion depends on the bytes before them: expand the whole
            # sequence, keep the positions this step feeds.
            full = self.expansion(input_ids, kwargs.get("attention_mask"))
            inputs["expanded_input_ids"] = full[:, full.shape[1] - step_ids.shape[1]:]
        return inputs
'''
