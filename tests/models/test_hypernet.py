"""The embedding hypernetwork: FVT at step 0, decompositions, sharding, export, transfer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.models import fvt, make_mesh
from tokenkit.models import hypernet as H
from tokenkit.models import transfer as transfer_lib
from tokenkit.models.config import from_hf_dict
from tokenkit.models.sharding import DEFAULT_RULES, FSDP_RULES
from tokenkit.training import params as params_lib

REPO = Path(__file__).resolve().parents[2]
WIDTH = 16
TINY_TEACHER = "data/models/tiny_teacher:source=Llama3"


@pytest.fixture(scope="module")
def source():
    return load_byteify_tokenizer(str(REPO / TINY_TEACHER))


@pytest.fixture(scope="module")
def gemma(tiny_tokenizer_specs):
    return load_byteify_tokenizer(tiny_tokenizer_specs["gemma2_sp"])


@pytest.fixture(scope="module")
def decompositions(source, gemma):
    return H.decompose_vocabulary(source, gemma, 8, show_progress=False)


def _embeddings(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Per-dimension offsets and spreads, so the rescaler has something to undo.
    return (rng.normal(size=(n_rows, n, WIDTH)) * rng.uniform(0.5, 2.0, WIDTH)
            + rng.normal(size=WIDTH)).astype(np.float32)


CONFIGS = {
    "transformer": H.HypernetConfig(num_layers=2, num_heads=4),
    "transformer_mean_no_mask": H.HypernetConfig(num_layers=1, num_heads=2, pooling="mean",
                                                  use_attention_mask=False),
    "transformer_unshared": H.HypernetConfig(num_layers=1, num_heads=4, shared=False),
    "transformer_narrow": H.HypernetConfig(num_layers=1, num_heads=2, hidden_size=8,
                                           multiply_hidden_dim_by_num_embeddings=False),
    "mlp_only": H.HypernetConfig(num_layers=2, use_attention=False),
    "linear": H.HypernetConfig(architecture="linear"),
    "linear_not_residual": H.HypernetConfig(architecture="linear", residual=False),
    "identity": H.HypernetConfig(architecture="identity"),
}


@pytest.mark.parametrize("n", [1, 2], ids=["tied", "untied"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_zero_is_fvt(name, n, source, gemma, decompositions):
    config = CONFIGS[name]
    emb = _embeddings(len(source), n)
    module = H.Hypernet(config, WIDTH, n, 8)
    params = H.init_params(module, emb, seed=3)
    hypernet = H.TrainedHypernet(config, WIDTH, n, 8, params, "x", len(source))
    pred = hypernet.predict_vocabulary(emb, decompositions, chunk=1024)
    expected = fvt.fvt(source, gemma, emb[:, 0], output_embeddings=emb[:, 1] if n == 2 else None,
                       show_progress=False)
    assert decompositions.truncated == 0 and expected.stats.fallback == 0
    np.testing.assert_allclose(pred[:, 0], expected.input_embeddings, rtol=1e-5, atol=1e-5)
    if n == 2:
        np.testing.assert_allclose(pred[:, 1], expected.output_embeddings, rtol=1e-5, atol=1e-5)


def test_a_trained_network_departs_from_fvt_and_keeps_its_rescaler(source, decompositions):
    emb = _embeddings(len(source), 1)
    module = H.Hypernet(CONFIGS["transformer"], WIDTH, 1, 8)
    params = H.init_params(module, emb, seed=0)
    trainable, fixed = params_lib.partition(params, H.is_trainable)
    assert set(fixed) == {"rescaler_shift", "rescaler_scale"}
    np.testing.assert_allclose(fixed["rescaler_shift"][0], emb[:, 0].mean(0), rtol=1e-5, atol=1e-5)
    d = decompositions
    args = (jnp.asarray(emb), d.parts[:512], d.mask[:512], d.copied[:512])

    def loss(t):
        pred = H.predict(module, params_lib.merge(t, fixed), *args)
        return jnp.sum(jnp.square(pred - 1.0))

    grads = jax.grad(loss)(trainable)
    # Only the output layer gets a gradient at step 0 (everything before it feeds a zero
    # kernel); after one step the predictions move.
    assert np.abs(grads["network"]["output"]["kernel"]).max() > 0
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, trainable, grads)
    before = H.predict(module, params, *args)
    after = H.predict(module, params_lib.merge(stepped, fixed), *args)
    moved = np.abs(np.asarray(after - before)).max(axis=(1, 2))
    copied = np.asarray(d.copied[:512])
    assert moved[~copied].min() > 0 and moved[copied].max() == 0  # specials stay copied


def test_decompositions_follow_fvt(source, gemma, decompositions):
    d = decompositions
    stats = fvt.fvt_mapping(source, gemma, len(source), show_progress=False).stats
    assert d.stats == stats
    vocab = source.get_vocab()
    bos = gemma.bos_token_id
    assert d.copied[bos] and d.parts[bos, 0] == vocab["<|begin_of_text|>"] and d.mask[bos].sum() == 1
    assert int(d.copied.sum()) == stats.special
    for i in range(len(gemma)):
        token = gemma.convert_ids_to_tokens(i)
        if not d.copied[i]:
            spelled = "".join(source.convert_ids_to_tokens(d.parts[i][d.mask[i]]))
            assert spelled == token, (i, token, spelled)
    short = H.decompose_vocabulary(source, gemma, 2, show_progress=False)
    assert short.truncated == int((d.mask.sum(1) > 2).sum()) > 0
    np.testing.assert_array_equal(short.parts, d.parts[:, :2])


def test_piece_decomposer_matches_the_vocabulary_decomposition(source, gemma, decompositions):
    decomposer = H.PieceDecomposer(source)
    for i in range(100, 400):
        token = gemma.convert_ids_to_tokens(i)
        expected = decompositions.parts[i][decompositions.mask[i]].tolist()
        assert decomposer(token) == expected == decomposer(token)
    import pickle

    assert pickle.loads(pickle.dumps(decomposer))("Ġhello") == decomposer("Ġhello")


def test_export_round_trip(tmp_path, source, decompositions):
    emb = _embeddings(len(source), 2)
    module = H.Hypernet(CONFIGS["transformer_unshared"], WIDTH, 2, 8)
    params = jax.tree.map(lambda x: x + 0.01, H.init_params(module, emb, seed=1))
    hypernet = H.TrainedHypernet(CONFIGS["transformer_unshared"], WIDTH, 2, 8, params,
                                 TINY_TEACHER, len(source), base_model="m")
    hypernet.save(tmp_path / "hn")
    loaded = H.TrainedHypernet.load(tmp_path / "hn")
    assert loaded.config == hypernet.config and loaded.source_vocab_size == len(source)
    assert (loaded.hidden_size, loaded.num_embeddings, loaded.max_parts) == (WIDTH, 2, 8)
    np.testing.assert_array_equal(
        loaded.predict_vocabulary(emb, decompositions), hypernet.predict_vocabulary(emb, decompositions)
    )
    with pytest.raises(FileNotFoundError, match="holds no hypernet.json"):
        H.TrainedHypernet.load(tmp_path)


def test_parameters_carry_logical_axes_and_shard_under_the_rules():
    module = H.Hypernet(H.HypernetConfig(num_layers=1, num_heads=4), 32, 2, 4)
    params = H.init_params(module, _embeddings(64, 2)[:, :, :16].repeat(2, -1), seed=0)
    axes = H.logical_axes(module)
    flat = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert flat and all(len(spec) == np.ndim(x) for (_, spec), x in zip(flat, jax.tree.leaves(params)))
    mesh = make_mesh(2, 4)
    sh = H.param_shardings(module, params, mesh, DEFAULT_RULES)
    layer = sh["network"]["layer_0"]
    assert layer["up"]["kernel"].spec == jax.sharding.PartitionSpec(None, "model")
    assert layer["down"]["kernel"].spec == jax.sharding.PartitionSpec("model", None)
    fsdp = H.param_shardings(module, params, mesh, FSDP_RULES)
    assert fsdp["network"]["layer_0"]["up"]["kernel"].spec == jax.sharding.PartitionSpec("data", "model")
    placed = jax.device_put(params, sh)
    assert placed["network"]["layer_0"]["up"]["kernel"].sharding == layer["up"]["kernel"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(architecture="mlp"), "Unknown hypernet architecture 'mlp'"),
    (dict(pooling="last"), "Unknown hypernet pooling"),
    (dict(residual_pooling="max"), "Unknown hypernet residual_pooling"),
    (dict(num_layers=0), "num_layers >= 1"),
    (dict(hidden_size=0), "hidden_size must be positive"),
])
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        H.HypernetConfig(**kwargs)


def test_heads_must_divide_the_width():
    module = H.Hypernet(H.HypernetConfig(num_heads=3), WIDTH, 1, 4)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        H.init_params(module, _embeddings(32, 1))


def _tiny_model(tied: bool):
    config = from_hf_dict({
        "model_type": "llama", "vocab_size": 4096, "hidden_size": WIDTH, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "tie_word_embeddings": tied,
    })
    emb = _embeddings(4096, 2)
    params = {"embedder": {"embedding": emb[:, 0]}}
    if not tied:
        params["lm_head"] = {"kernel": emb[:, 1].T.copy()}
    return config, params


@pytest.mark.parametrize("tied", [True, False])
def test_transfer_with_a_fresh_hypernet_is_fvt(tied, source, gemma):
    config, params = _tiny_model(tied)
    n = 1 if tied else 2
    stacked = H.stack_embeddings(params["embedder"]["embedding"][: len(source)],
                                 None if tied else params["lm_head"]["kernel"].T[: len(source)])
    module = H.Hypernet(CONFIGS["transformer"], WIDTH, n, 8)
    hypernet = H.TrainedHypernet(CONFIGS["transformer"], WIDTH, n, 8,
                                 H.init_params(module, stacked), TINY_TEACHER, len(source))
    by_hn = transfer_lib.transfer(config, params, source, gemma, init="hypernet", hypernet=hypernet)
    by_fvt = transfer_lib.transfer(config, params, source, gemma)
    assert by_hn.config == by_fvt.config and by_hn.stats == by_fvt.stats
    for key in ("embedder", "lm_head"):
        if key in by_fvt.params:
            a, b = jax.tree.leaves(by_hn.params[key]), jax.tree.leaves(by_fvt.params[key])
            np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="init='hypernet' needs one"):
        transfer_lib.transfer(config, params, source, gemma, init="hypernet")
    with pytest.raises(ValueError, match="predicts 2 embedding matrices; the model is tied"
                       if not tied else "predicts 1 embedding matrices; the model is untied"):
        other, other_params = _tiny_model(not tied)
        transfer_lib.transfer(other, other_params, source, gemma, init="hypernet", hypernet=hypernet)
    wrong = dataclasses.replace(hypernet, source_vocab_size=len(source) + 1)
    with pytest.raises(ValueError, match="Apply it to the model it was trained on"):
        transfer_lib.transfer(config, params, source, gemma, init="hypernet", hypernet=wrong)
