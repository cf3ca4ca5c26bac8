"""Checkpoint reading/writing details and refusal of what we do not support."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tokenkit.models import (
    ModelConfig,
    RopeConfig,
    Transformer,
    UnsupportedConfigError,
    from_hf_dict,
    init_params,
    load_pretrained,
    resolve_checkpoint_dir,
    save_pretrained,
    to_hf_dict,
)
from tokenkit.models.hf_io import parse_size

import transformers  # noqa: E402

NAMES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "phi3", "phi3_longrope")


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_hf_dict(name, tiny_hf):
    hf = tiny_hf.hf_config(name).to_dict()
    config = from_hf_dict(hf)
    assert from_hf_dict(to_hf_dict(config)) == config
    # transformers reads what we write into the same settings.
    again = transformers.AutoConfig.for_model(**{
        k: v for k, v in to_hf_dict(config).items() if k != "architectures"
    })
    assert from_hf_dict(again.to_dict()) == config


def test_both_rope_spellings_give_the_same_config():
    base = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=131072)
    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    old = from_hf_dict({**base, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}})
    older = from_hf_dict({**base, "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **scaling}})
    new = from_hf_dict({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}})
    assert old == older == new
    assert new.rope == RopeConfig(500000.0, "llama3", 32.0, 1.0, 4.0, 8192)

    g = dict(model_type="gemma3_text", vocab_size=64, hidden_size=32, intermediate_size=64,
             num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    old = from_hf_dict({**g, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
                        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6})
    new = from_hf_dict({**g, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})
    assert old == new
    assert new.layer_types == ("sliding_attention",) * 5 + ("full_attention",)
    assert new.rope.kind == "linear" and new.rope_local.theta == 1e4


def test_class_defaults_fill_missing_keys():
    # Gemma2 configs on the hub omit values equal to the class defaults.
    config = from_hf_dict(dict(model_type="gemma2", vocab_size=64, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, head_dim=8))
    assert config.attn_logit_softcap == 50.0 and config.final_logit_softcap == 30.0
    assert config.layer_types == ("sliding_attention", "full_attention")
    assert config.tie_word_embeddings and config.activation == "gelu_tanh"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "falcon"}, r"'falcon'.*supported model types: gemma2, gemma3, gemma3_text, gpt2, llama"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"'yarn' is not supported \(supported: default, linear, llama3\)"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, r"'dynamic' is not supported"),
        ({"hidden_act": "relu"}, r"Activation 'relu' is not supported"),
        ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor=0.5 is not supported for llama"),
        ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
         r"'longrope' is not supported \(supported: default, linear, llama3\)"),
    ],
)
def test_unsupported_configs_are_refused_by_name(change, message):
    hf = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4)
    hf.update(change)
    with pytest.raises(UnsupportedConfigError, match=message):
        from_hf_dict(hf)


def test_unsupported_checkpoint_names_its_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon", "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(UnsupportedConfigError, match=r"'falcon'.*FalconForCausalLM.*supported model types: .*qwen3"):
        load_pretrained(tmp_path)


def test_missing_local_paths_never_go_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def fail(*a, **k):
        raise AssertionError("hub must not be contacted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    for path in [str(tmp_path / "missing"), "./missing-model", "~/missing", "a/b/c", "../x"]:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            resolve_checkpoint_dir(path)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve_checkpoint_dir(file)


def test_hub_ids_are_downloaded_with_snapshot_download(hf_checkpoints, monkeypatch):
    import huggingface_hub

    path, _ = hf_checkpoints("llama")
    calls = []

    def fake(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    config, params = load_pretrained("some-org/some-model", revision="main")
    assert calls == [("some-org/some-model", "main", ("*.json", "*.safetensors", "*.msgpack"))]
    assert config.architecture == "llama"

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not be fetched from the hub: offline"):
        load_pretrained("some-org/other-model")


def test_sharded_save_with_index_loads_everywhere(hf_checkpoints, tiny_hf, tmp_path):
    path, hf_model = hf_checkpoints("llama")
    config, params = load_pretrained(path)
    save_pretrained(tmp_path, config, params, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    assert all(len(load_file(tmp_path / f)) > 0 for f in files)

    config2, params2 = load_pretrained(tmp_path)
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, (6, 4), 6)
    ref, _ = tiny_hf.hf_forward(hf_model, ids, mask)
    got, _ = tiny_hf.hf_forward(reloaded, ids, mask)
    np.testing.assert_allclose(got[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-5)

    # A later single-file save replaces the shards rather than leaving them behind.
    save_pretrained(tmp_path, config, params)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_dtypes_on_load_and_save(hf_checkpoints, tmp_path):
    path, _ = hf_checkpoints("qwen3")
    config, params = load_pretrained(path)
    save_pretrained(tmp_path, config, params, dtype="bfloat16")
    stored = load_file(tmp_path / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, kept = load_pretrained(tmp_path, dtype=None)
    assert {x.dtype for x in jax.tree.leaves(kept)} == {jnp.dtype(jnp.bfloat16)}
    _, as_f32 = load_pretrained(tmp_path)
    assert {x.dtype for x in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}
    q = as_f32["layers"]["attention"]["query"]["kernel"]
    ref = params["layers"]["attention"]["query"]["kernel"]
    np.testing.assert_allclose(np.asarray(q), np.asarray(ref), rtol=1e-2, atol=1e-2)


def test_multimodal_gemma3_checkpoint_reads_the_text_model(hf_checkpoints, tmp_path):
    path, _ = hf_checkpoints("gemma3")
    text_config, text_params = load_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    renamed = {
        ("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
        for k, v in tensors.items()
    }
    renamed["model.vision_tower.dummy.weight"] = np.zeros((2, 2), np.float32)
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf = json.loads((path / "config.json").read_text())
    outer = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
             "text_config": {k: v for k, v in hf.items() if k not in ("architectures",)}}
    (tmp_path / "config.json").write_text(json.dumps(outer))
    config, params = load_pretrained(tmp_path)
    assert config == text_config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(text_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_tensor_is_named(hf_checkpoints, tmp_path):
    path, _ = hf_checkpoints("mistral")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        load_pretrained(tmp_path)


def test_save_refuses_untied_model_without_lm_head_and_reports_extras(tmp_path, caplog):
    config = ModelConfig("llama", vocab_size=16, hidden_size=8, intermediate_size=16,
                         num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4)
    params = init_params(Transformer(config), jax.random.key(0))
    without_head = {k: v for k, v in params.items() if k != "lm_head"}
    with pytest.raises(KeyError, match="lm_head"):
        save_pretrained(tmp_path, config, without_head)
    extra = {**params, "expand_embedder": {"embedding": jnp.zeros((4, 8))}}
    with caplog.at_level("WARNING"):
        save_pretrained(tmp_path, config, extra)
    assert "expand_embedder/embedding" in caplog.text


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2MiB") == 2 * 2**20
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="not understood"):
        parse_size("5 parsecs")


def test_model_config_validates_its_fields():
    base = dict(vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=2,
                num_heads=2, num_kv_heads=1, head_dim=4)
    with pytest.raises(UnsupportedConfigError, match="'falcon' is not supported"):
        ModelConfig("falcon", **base)
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig("mistral", **base, layer_types=("sliding_attention",) * 2)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig("llama", **{**base, "num_kv_heads": 3})
    with pytest.raises(UnsupportedConfigError, match="RoPE type 'yarn'"):
        RopeConfig(kind="yarn")
    config = ModelConfig("llama", **base)
    assert hash(config) == hash(dataclasses.replace(config))
