"""Checkpoints written by the upstream tokenkit's own Flax code load with our logits.

The fixtures under `data/upstream/` (see its README) were written by the upstream's
modelling and checkpoint code with random weights, together with the logits its models
computed on fixed inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from tokenkit.models import upstream_format
from tokenkit.models.config import UnsupportedConfigError, load_config
from tokenkit.models.hf_io import load_pretrained
from tokenkit.models.sharding import FSDP_RULES, make_mesh, param_shardings
from tokenkit.models.transformer import make_transformer

DATA = Path(__file__).parent / "data" / "upstream"
EXPECTED_ARCH = {
    "tpu_llama": "llama",
    "tpu_llama_qknorm": "qwen3",
    "tpu_gemma2": "gemma2",
    "tpu_gemma3": "gemma3",
    "tpu_llama_train": "llama",
}


def _relative_error(directory: Path, config, params) -> float:
    expected = np.load(directory / "expected.npz")
    mask = expected["attention_mask"]
    out = make_transformer(config).apply(
        {"params": params}, jnp.asarray(expected["input_ids"]), jnp.asarray(mask)
    )
    ours, ref = np.asarray(out.logits, np.float32), expected["logits"]
    real = mask.astype(bool)  # padded positions are not compared
    return float(np.abs(ours - ref)[real].max() / np.abs(ref[real]).max())


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCH))
def test_upstream_checkpoint_logits_match(name):
    config, params = load_pretrained(DATA / name)
    assert config.architecture == EXPECTED_ARCH[name]
    assert _relative_error(DATA / name, config, params) <= 1e-4


def test_configs_map_upstream_settings():
    llama = load_config(DATA / "tpu_llama")
    assert (llama.rope.kind, llama.rope.factor, llama.tie_word_embeddings) == ("llama3", 4.0, False)
    qk = load_config(DATA / "tpu_llama_qknorm")
    assert qk.qk_norm and qk.qkv_bias and qk.out_bias and qk.tie_word_embeddings
    gemma2 = load_config(DATA / "tpu_gemma2")
    # tie_word_embeddings is absent from the file: the upstream's default (tied) applies.
    assert "tie_word_embeddings" not in json.loads((DATA / "tpu_gemma2" / "config.json").read_text())
    assert gemma2.tie_word_embeddings
    assert gemma2.layer_types[:2] == ("sliding_attention", "full_attention")
    assert gemma2.attn_logit_softcap is None and gemma2.final_logit_softcap == 30.0
    gemma3 = load_config(DATA / "tpu_gemma3")
    assert gemma3.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    assert (gemma3.rope.kind, gemma3.rope.theta, gemma3.rope_local.theta) == ("linear", 1e6, 1e4)


def test_placed_on_mesh_with_target_shardings():
    mesh = make_mesh(4, 2)
    config, placed = load_pretrained(DATA / "tpu_gemma3", mesh=mesh, rules=FSDP_RULES)
    _, single = load_pretrained(DATA / "tpu_gemma3")
    targets = param_shardings(config, mesh, FSDP_RULES)
    flat_placed = jax.tree_util.tree_leaves_with_path(placed)
    flat_targets = dict(jax.tree_util.tree_leaves_with_path(targets))
    assert len(flat_placed) == len(flat_targets)
    for path, array in flat_placed:
        assert array.sharding.is_equivalent_to(flat_targets[path], array.ndim), path
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dtype_conversion_and_kept_dtype():
    _, bf16 = load_pretrained(DATA / "tpu_llama", dtype=jnp.bfloat16)
    _, kept = load_pretrained(DATA / "tpu_llama", dtype=None)
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(kept)} == {jnp.dtype(jnp.float32)}


def test_sharded_export_with_index(tmp_path):
    src = DATA / "tpu_llama"
    shutil.copy(src / "config.json", tmp_path)
    shutil.copy(src / "expected.npz", tmp_path)
    tree = serialization.msgpack_restore((src / upstream_format.EXPORT_FILE).read_bytes())
    shards = {
        "flax_model-00001-of-00002.msgpack": {"model": tree["model"]},
        "flax_model-00002-of-00002.msgpack": {"lm_head": tree["lm_head"]},
    }
    weight_map = {}
    for fname, part in shards.items():
        (tmp_path / fname).write_bytes(serialization.msgpack_serialize(part))
        weight_map.update({k: fname for k in part})
    (tmp_path / upstream_format.EXPORT_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    config, params = load_pretrained(tmp_path)
    assert _relative_error(tmp_path, config, params) <= 1e-4


def _copy_with_config(tmp_path: Path, name: str, **changes) -> Path:
    out = tmp_path / name
    shutil.copytree(DATA / name, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_unknown_upstream_type_is_refused(tmp_path):
    path = _copy_with_config(tmp_path, "tpu_llama", model_type="tpu_qwen2")
    with pytest.raises(UnsupportedConfigError, match="'tpu_qwen2'.*tpu_llama, tpu_gemma2, tpu_gemma3"):
        load_pretrained(path)
    with pytest.raises(UnsupportedConfigError, match="tpu_qwen2"):
        load_config(path)


def test_missing_msgpack_is_an_error(tmp_path):
    shutil.copy(DATA / "tpu_gemma2" / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No flax_model\.msgpack.*params\.msgpack.*config\.json"):
        load_pretrained(tmp_path)


def test_missing_index_shard_is_an_error(tmp_path):
    shutil.copy(DATA / "tpu_llama" / "config.json", tmp_path)
    (tmp_path / upstream_format.EXPORT_INDEX).write_text(
        json.dumps({"weight_map": {"model/x": "flax_model-00001-of-00001.msgpack"}})
    )
    with pytest.raises(FileNotFoundError, match="flax_model-00001-of-00001.msgpack"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "name, changes, key",
    [
        ("tpu_llama", {"skip_out_norm": True}, "skip_out_norm"),
        ("tpu_gemma2", {"expand_input_ids": True}, "expand_input_ids"),
        ("tpu_gemma2", {"query_pre_attn_scalar": 8}, "query_pre_attn_scalar"),
        ("tpu_gemma3", {"attn_logit_softcapping": 5.0}, "attn_logit_softcapping"),
        ("tpu_llama", {"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
    ],
)
def test_unsupported_settings_are_refused_by_name(tmp_path, name, changes, key):
    path = _copy_with_config(tmp_path, name, **changes)
    with pytest.raises(UnsupportedConfigError, match=key):
        load_config(path)


def test_config_without_shape_keys_is_an_error(tmp_path):
    cfg = json.loads((DATA / "tpu_llama" / "config.json").read_text())
    del cfg["hidden_size"]
    with pytest.raises(ValueError, match="hidden_size"):
        upstream_format.config_from_upstream(cfg)


def _training_checkpoint(tmp_path: Path, edit) -> Path:
    out = tmp_path / "train"
    shutil.copytree(DATA / "tpu_llama_train", out)
    tree = serialization.msgpack_restore((out / "params.msgpack").read_bytes())
    edit(tree, out)
    (out / "params.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    return out


def test_lora_training_checkpoint_is_refused(tmp_path):
    def to_lora(tree, _):
        tree["model_lora"] = tree.pop("model")

    with pytest.raises(KeyError, match="LoRA run saves only adapters"):
        load_pretrained(_training_checkpoint(tmp_path, to_lora))


def test_hypernet_settings_are_required_and_checked(tmp_path):
    out = _training_checkpoint(tmp_path, lambda tree, out: (out / "args.yaml").unlink())
    with pytest.raises(FileNotFoundError, match="args.yaml"):
        load_pretrained(out)
    (out / "args.yaml").write_text("hypernet:\n  architecture: linear\n")
    with pytest.raises(UnsupportedConfigError, match="hypernet.architecture='linear'"):
        load_pretrained(out)


def test_identity_hypernet_uses_new_embeddings(tmp_path):
    out = _training_checkpoint(tmp_path, lambda tree, out: None)
    (out / "args.yaml").write_text("hypernet:\n  architecture: identity\n")
    config, params = load_pretrained(out)
    tree = serialization.msgpack_restore((out / "params.msgpack").read_bytes())
    np.testing.assert_array_equal(np.asarray(params["embedder"]["embedding"]), tree["new_embeddings"][:, 0])
    np.testing.assert_array_equal(np.asarray(params["lm_head"]["kernel"]), tree["new_embeddings"][:, 1].T)
