"""Mesh construction, logical-axis rules and sharded execution on 8 simulated CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tokenkit.models import (
    FSDP_RULES,
    Transformer,
    batch_shardings,
    cache_shardings,
    hf_io,
    init_cache,
    load_pretrained,
    make_mesh,
    param_shardings,
    shard,
    sharding_context,
)

assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices; run under it"

import torch  # noqa: E402  (a test dependency: parity with the PyTorch models)
import transformers  # noqa: E402


@pytest.fixture(scope="module")
def divisible_checkpoint(tmp_path_factory):
    """A tiny Llama whose vocab, heads, KV heads and MLP divide a (4 data x 2 model) mesh."""
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0 if "embed" in name else p.shape[-1] ** -0.5)
    path = tmp_path_factory.mktemp("llama_div")
    model.save_pretrained(path)
    return path


def test_make_mesh_shapes_and_errors():
    mesh = make_mesh(2, 4)
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh(-1, 2).shape) == {"data": 4, "model": 2}
    assert dict(make_mesh(8, -1).shape) == {"data": 8, "model": 1}
    with pytest.raises(ValueError, match="must equal the number of devices \\(8\\)"):
        make_mesh(3, 3)
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        make_mesh(-1, 3)


def test_parameters_are_split_as_the_rules_say(divisible_checkpoint):
    mesh = make_mesh(4, 2)
    config, params = load_pretrained(divisible_checkpoint, mesh=mesh)
    q = params["layers"]["attention"]["query"]["kernel"]  # [L, D, H, hd]
    assert q.sharding.spec == P(None, None, "model", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 8)
    emb = params["embedder"]["embedding"]
    assert emb.sharding.spec == P("model", None)
    assert emb.addressable_shards[0].data.shape == (64, 32)
    down = params["layers"]["mlp"]["down"]["kernel"]  # [L, F, D]
    assert down.sharding.spec == P(None, "model", None)
    assert params["final_norm"]["scale"].sharding.spec == P(None)

    _, fsdp = load_pretrained(divisible_checkpoint, mesh=mesh, rules=FSDP_RULES)
    q = fsdp["layers"]["attention"]["query"]["kernel"]
    assert q.sharding.spec == P(None, "data", "model", None)
    assert q.addressable_shards[0].data.shape == (2, 8, 2, 8)
    assert fsdp["lm_head"]["kernel"].sharding.spec == P("data", "model")

    # Same values as an unsharded load.
    _, plain = load_pretrained(divisible_checkpoint)
    for a, b in zip(jax.tree.leaves(fsdp), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_expansion_table_gets_vocab_embed_sharding(divisible_checkpoint):
    config, params = load_pretrained(divisible_checkpoint)
    with_extra = {**params, "expand_embedder": {"embedding": np.zeros((256, 32), np.float32)}}
    sh = param_shardings(config, make_mesh(4, 2), FSDP_RULES, params=with_extra)
    assert sh["expand_embedder"]["embedding"].spec == P("model", "data")
    assert "expand_embedder" not in param_shardings(config, make_mesh(4, 2))


def test_indivisible_dimensions_are_replicated(divisible_checkpoint):
    mesh = make_mesh(1, 8)  # 2 KV heads and 4 heads cannot split 8 ways; vocab 128 can
    config, params = load_pretrained(divisible_checkpoint, mesh=mesh)
    assert params["layers"]["attention"]["key"]["kernel"].sharding.spec == P(None, None, None, None)
    assert params["embedder"]["embedding"].sharding.spec == P("model", None)


def test_loading_reads_only_each_devices_slice(divisible_checkpoint, monkeypatch):
    reads = []
    original = hf_io._read_one

    def recording(leaf, tensor_slice, slices):
        out = original(leaf, tensor_slice, slices)
        reads.append((leaf.path, out.shape))
        return out

    monkeypatch.setattr(hf_io, "_read_one", recording)
    load_pretrained(divisible_checkpoint, mesh=make_mesh(4, 2), rules=FSDP_RULES)
    q_reads = {shape for path, shape in reads if path[-2:] == ("query", "kernel")}
    assert q_reads == {(8, 2, 8)}  # a quarter of embed, half of the heads, per layer
    emb_reads = {shape for path, shape in reads if path[0] == "embedder"}
    assert emb_reads == {(64, 8)}


def _assert_sharded_forward_equals_unsharded(config, plain, lengths) -> None:
    """Logits, hidden states and the written cache on a (4 data x 2 model) FSDP mesh equal
    an unsharded forward (4 right-padded rows of `lengths`)."""
    model = Transformer(config)
    width = max(lengths)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (4, width)).astype(np.int32)
    mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)

    def forward(p, i, m, c):
        out = model.apply({"params": p}, i, m, cache=c, output_hidden_states=True)
        return out.logits, out.hidden_states, out.cache

    ref = jax.jit(forward)(plain, ids, mask, init_cache(config, 4, 12))

    mesh = make_mesh(4, 2)
    p_sh = param_shardings(config, mesh, FSDP_RULES)
    params = shard(plain, p_sh)
    batch = {"ids": ids, "mask": mask}
    b_sh = batch_shardings(mesh, batch)
    batch = shard(batch, b_sh)
    cache = init_cache(config, 4, 12)
    c_sh = cache_shardings(mesh, cache)
    cache = shard(cache, c_sh)
    assert batch["ids"].sharding.spec == P("data", None)
    assert cache.key.sharding.spec == P(None, "data", "model", None, None)

    out = jax.jit(forward, in_shardings=(p_sh, b_sh["ids"], b_sh["mask"], c_sh))(
        params, batch["ids"], batch["mask"], cache
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out[0])[real], np.asarray(ref[0])[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[1])[:, real], np.asarray(ref[1])[:, real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[2].key), np.asarray(ref[2].key), atol=1e-5)


def test_sharded_forward_equals_unsharded(divisible_checkpoint):
    config, plain = load_pretrained(divisible_checkpoint)
    _assert_sharded_forward_equals_unsharded(config, plain, (9, 5, 7, 2))


@pytest.mark.parametrize("name", ["gpt2", "phi3_longrope"])
def test_fused_checkpoints_load_and_run_sharded(name, hf_checkpoints):
    """GPT-2's c_attn / Phi-3's qkv_proj and gate_up_proj: each device reads its own
    columns / rows of the fused tensors; the sharded forward equals the unsharded one
    (rows on both sides of LongRoPE's switch at 8 tokens)."""
    path, _ = hf_checkpoints(name)
    config, plain = load_pretrained(path)
    _, sharded = load_pretrained(path, mesh=make_mesh(4, 2), rules=FSDP_RULES)
    assert sharded["layers"]["attention"]["key"]["kernel"].sharding.spec == P(None, "data", "model", None)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _assert_sharded_forward_equals_unsharded(config, plain, (10, 5, 9, 2))


def test_batch_not_divisible_by_data_parallelism_is_an_error():
    mesh = make_mesh(4, 2)
    with pytest.raises(ValueError, match="not divisible"):
        batch_shardings(mesh, {"input_ids": np.zeros((6, 3), np.int32)})


def test_batch_shardings_are_named_shardings():
    mesh = make_mesh(2, 4)
    sh = batch_shardings(mesh, {"a": np.zeros((4, 3)), "b": np.zeros((4,))})
    assert isinstance(sh["a"], NamedSharding) and sh["a"].spec == P("data", None)
    assert sh["b"].spec == P("data")


def test_activation_constraints_apply_inside_the_sharding_context(divisible_checkpoint):
    config, plain = load_pretrained(divisible_checkpoint)
    model = Transformer(config)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (4, 6)).astype(np.int32)
    ref = jax.jit(lambda p, i: model.apply({"params": p}, i).logits)(plain, ids)
    mesh = make_mesh(4, 2)
    params = shard(plain, param_shardings(config, mesh))
    batch = shard(ids, batch_shardings(mesh, ids))
    with sharding_context(mesh):
        forward = jax.jit(lambda p, i: model.apply({"params": p}, i).logits)
        out = forward(params, batch)
        hlo = forward.lower(params, batch).as_text()
    assert "sharding_constraint" in hlo
    assert "sharding_constraint" not in forward.lower(params, batch).as_text()  # context off
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
