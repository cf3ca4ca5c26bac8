"""Hypernetwork training: the lexical loss, the Gin files, a short run end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gin
import jax.numpy as jnp
import numpy as np
import pytest

import tokenkit.train_zett_hn  # noqa: F401  (registers the entrypoint's configurables)
import tokenkit.zett  # noqa: F401
from tokenkit import entry
from tokenkit.data import tokenizer_sampler as TS
from tokenkit.models import hypernet as H
from tokenkit.training import metrics, zett_hn

REPO = Path(__file__).resolve().parents[2]
ZETT_EXPERIMENTS = sorted(p.name for p in (REPO / "experiments").glob("zett_hn_*.gin"))
REAL_SCALE = {"zett_hn_tinyllama_tpu.gin", "zett_hn_llama3_tpu.gin", "zett_hn_gemma2_tpu.gin"}


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_lexical_loss_reads_one_part_tokens_only():
    source = jnp.asarray(np.random.default_rng(0).normal(size=(10, 1, 4)), jnp.float32)
    parts = np.array([[3, 0], [4, 0], [5, 6], [7, 0], [0, 0]], np.int32)
    vocab = TS.SampledVocab(
        parts=parts, mask=np.array([[1, 0], [1, 0], [1, 1], [1, 0], [0, 0]], bool),
        copied=np.array([1, 0, 0, 0, 0], bool), valid=np.array([1, 1, 1, 1, 0], bool),
        space_mask=np.zeros(5, bool),
    )
    exact = jnp.take(source, parts[:, 0], axis=0)
    assert float(zett_hn.lexical_loss(exact, source, vocab)) == 0.0
    # Copied, multi-part and padding rows do not count.
    moved = exact.at[jnp.array([0, 2, 4])].add(5.0)
    assert float(zett_hn.lexical_loss(moved, source, vocab)) == 0.0
    off = exact.at[1].add(1.0)
    norms = np.linalg.norm(np.asarray(source)[[4, 7], 0], axis=-1).mean()
    np.testing.assert_allclose(float(zett_hn.lexical_loss(off, source, vocab)), 4.0 / 2 / norms, rtol=1e-5)


def _gin_surface():
    spec = importlib.util.spec_from_file_location("gin_surface", REPO / "tests" / "test_gin_surface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OURS = ("tokenkit.training.zett_hn", "tokenkit.models.hypernet", "tokenkit.data.tokenizer_sampler")


def test_every_bindable_parameter_takes_effect():
    surface = _gin_surface()
    ours = [c for c in surface.CONFIGURABLES if c.module in OURS]
    assert {c.name for c in ours} == {"train_zett_hn", "HypernetConfig", "TokenizerSamplerConfig"}
    for configurable in ours:
        surface.test_no_call_site_passes_a_bindable_parameter(configurable)
        surface.test_every_bindable_parameter_is_read(configurable)


def test_the_zett_experiments_exist():
    assert {"zett_hn_tiny.gin", "zett_hn_smollm2.gin"} | REAL_SCALE <= set(ZETT_EXPERIMENTS)


@pytest.mark.parametrize("name", ZETT_EXPERIMENTS)
def test_zett_experiments_parse_and_bind(name, monkeypatch):
    """Each file binds the real configurables, and `train_zett_hn` accepts what it binds
    (stopped where it would load the model)."""
    entry.parse_gin([f"experiments/{name}"], finalize=False)
    hypernet = H.HypernetConfig()
    sampler = TS.TokenizerSamplerConfig()
    assert sampler.hn_surface_maxlen >= 1 and hypernet.architecture in H.ARCHITECTURES
    seen = {}

    class Stop(Exception):
        pass

    def fake_build(model, tokenizer, hypernet_config, max_parts, *, mesh, seed, dtype):
        seen.update(model=model, tokenizer=tokenizer, mesh=dict(mesh.shape), max_parts=max_parts)
        raise Stop

    monkeypatch.setattr(zett_hn, "build", fake_build)
    with pytest.raises(Stop):
        zett_hn.train_zett_hn(Path("/tmp/unused"))
    assert seen["max_parts"] == sampler.hn_surface_maxlen
    assert ":source=" in seen["tokenizer"]
    if name in REAL_SCALE:
        assert seen["mesh"] == {"data": 1, "model": 8}
        assert gin.query_parameter("train_zett_hn.dtype") == "bfloat16"
    else:
        assert (REPO / seen["model"]).exists() or seen["model"].startswith(("/", "~/.cache/tokenkit/"))


@pytest.mark.slow
def test_a_short_run_trains_exports_and_transfers(tmp_path):
    """Identity steps then sampled-tokenizer steps on the tiny teacher; the export applies
    through `python -m tokenkit.zett`'s function and differs from FVT."""
    from tokenkit import zett
    from tokenkit.byteify import load_byteify_tokenizer
    from tokenkit.models import load_pretrained
    from tokenkit.models import transfer as transfer_lib

    workdir = tmp_path / "run"
    bindings = [
        "train_zett_hn.model = 'data/models/tiny_teacher'",
        "train_zett_hn.tokenizer = 'data/models/tiny_teacher:source=Llama3'",
        "train_zett_hn.losses = ['sft', 'lexical']",
        "train_zett_hn.steps = 4", "train_zett_hn.identity_steps = 2",
        "train_zett_hn.identity_tokens = 64", "train_zett_hn.batch_size = 2",
        "train_zett_hn.num_workers = 0", "train_zett_hn.dtype = 'float32'",
        "train_zett_hn.n_model_parallel = 1", "train_zett_hn.n_data_parallel = 1",
        "train_zett_hn.log_interval = 1", "train_zett_hn.save_interval = 2",
        "train_zett_hn.eval_texts = 2",
        "train_zett_hn.eval_tokenizers = {'gemma2_sp': 'data/tokenizers/gemma2_sp:source=Gemma2'}",
        "HypernetConfig.num_layers = 1", "HypernetConfig.num_heads = 2",
        "HypernetConfig.hidden_size = 32", "HypernetConfig.residual_alpha = 8.0",
        "TokenizerSamplerConfig.tokenizer_sample_min = 300",
        "TokenizerSamplerConfig.tokenizer_sample_mean = 400",
        "TokenizerSamplerConfig.tokenizer_sample_max = 500",
        "TokenizerSamplerConfig.block_size = 32", "TokenizerSamplerConfig.hn_surface_maxlen = 4",
        "TokenizerSamplerConfig.texts_per_batch = 8", "TokenizerSamplerConfig.include_chats = False",
        "TokenizerSamplerConfig.n_token_subsample = 256",
        "train/make_source.paths = ['data/corpus/validation.jsonl']",
        "eval/make_source.paths = ['data/corpus/validation.jsonl']",
        "learning_rate_schedule.learning_rate = 1e-2",
        "Checkpointer.async_save = False",
        "eval.tasks = ['tiny_world_mc']", "eval.limit = 4", "eval.lengths = [64, 128]",
    ]
    entry.parse_gin([], bindings, finalize=False)
    final = zett_hn.train_zett_hn(workdir)
    assert np.isfinite(final["gemma2_sp/bits_per_byte"]) and final["base/bits_per_byte"] > 0
    # lm-eval tasks for each named tokenizer (and the base model), results on disk.
    assert 0 <= final["gemma2_sp/tiny_world_mc/acc"] <= 1 and "base/tiny_world_mc/acc" in final
    assert (workdir / "lm_eval" / "gemma2_sp_step_4").is_dir()
    records = [r for r in metrics.read_metrics(workdir) if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "loss/identity" in records[0] and "loss/sft" in records[2] and "loss/lexical" in records[3]
    assert records[2]["vocab_size"] <= 505 and 0 <= records[3]["data_wait_fraction"] <= 1
    assert records[0]["learning_rate"] == pytest.approx(3e-4)  # identity_lr (default)

    exported = H.TrainedHypernet.load(workdir / "hypernet")
    assert exported.max_parts == 4 and exported.num_embeddings == 1 and exported.source_vocab_size == 4096
    gin.clear_config()
    out = tmp_path / "zett"
    entry.parse_gin([], [
        "zett.model = 'data/models/tiny_teacher'",
        "zett.tokenizer = 'data/models/tiny_teacher:source=Llama3'",
        "zett.target_tokenizer = 'data/tokenizers/gemma2_sp:source=Gemma2'",
        f"zett.hypernet = '{workdir / 'hypernet'}'",
    ], finalize=False)
    zett.zett(out)
    _, written = load_pretrained(out)
    source = load_byteify_tokenizer("data/models/tiny_teacher:source=Llama3")
    target = load_byteify_tokenizer("data/tokenizers/gemma2_sp:source=Gemma2")
    config, params = load_pretrained("data/models/tiny_teacher")
    by_hn = transfer_lib.transfer(config, params, source, target, init="hypernet", hypernet=exported)
    by_fvt = transfer_lib.transfer(config, params, source, target)
    got = np.asarray(written["embedder"]["embedding"])
    np.testing.assert_allclose(got, np.asarray(by_hn.params["embedder"]["embedding"]), atol=1e-6)
    assert np.abs(got - np.asarray(by_fvt.params["embedder"]["embedding"])).max() > 1e-4
    record = zett.read_stats(out)
    assert record["init"] == "hypernet" and record["stats"]["special"] == 5

    # Resuming continues from the last checkpoint.
    gin.clear_config()
    entry.parse_gin([], bindings + ["train_zett_hn.steps = 5"], finalize=False)
    zett_hn.train_zett_hn(workdir)
    steps = [r["step"] for r in metrics.read_metrics(workdir) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5]


def test_unsupported_options_fail_before_loading(tmp_path):
    entry.parse_gin([], ["train_zett_hn.model = 'm'", "train_zett_hn.tokenizer = 't:source=Llama3'"],
                    finalize=False)
    with pytest.raises(ValueError, match="train_model_mode='no'"):
        gin.bind_parameter("train_zett_hn.train_model_mode", "lora")
        zett_hn.train_zett_hn(tmp_path)
    gin.bind_parameter("train_zett_hn.train_model_mode", "no")
    gin.bind_parameter("train_zett_hn.losses", ["sft", "alm_unconstrained"])
    with pytest.raises(ValueError, match="Unknown hypernet losses"):
        zett_hn.train_zett_hn(tmp_path)


def test_build_run_with_a_hypernet_predicts_the_student_embeddings():
    """`build_run.hypernet`: at step 0 the predictions are the student's own rows; the
    hypernetwork's parameters train, are sharded, and its rescaler stays frozen."""
    import jax

    from tokenkit.data.pairs import TokenizerPair
    from tokenkit.models import make_mesh
    from tokenkit.training import setup, trainer

    entry.parse_gin(["experiments/alm_subword_hypernet.gin"], [
        "HypernetConfig.residual_alpha = 8.0", "train/make_source.paths = ['data/corpus/validation.jsonl']",
    ], finalize=False)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    run = setup.build_run(mesh, ["sft", "alm_unconstrained"], 0, TokenizerPair())
    assert run.hypernet is not None and run.hypernet.max_parts == 1
    assert set(run.frozen["hypernet"]) == {"rescaler_shift", "rescaler_scale"}
    assert "network" in run.trainable["hypernet"] and "hypernet" in run.trainable_shardings
    own = setup.params_lib.merge(run.trainable["student"], run.frozen["student"])
    predicted = run.student_params(run.trainable, run.frozen)
    np.testing.assert_allclose(np.asarray(predicted["embedder"]["embedding"]),
                               np.asarray(own["embedder"]["embedding"]), rtol=1e-5, atol=1e-5)
    # The loss reaches the hypernetwork: its output layer gets a gradient.
    loss_fn = trainer.make_loss_fn(run)
    from tokenkit.data.assembly import DataConfig, build_data

    _, example = build_data(DataConfig(), student=run.student.tokenizer, teacher=run.teacher.tokenizer,
                            chunkings=trainer.required_chunkings(run.losses), seed=0)
    batch = jax.tree.map(lambda x: np.repeat(x, 2, axis=0), example)
    grads = jax.grad(lambda t: loss_fn(t, run.frozen, batch, batch)[0].sum())(run.trainable)
    assert np.abs(np.asarray(grads["hypernet"]["network"]["output"]["kernel"])).max() > 0
    moved = jax.tree.map(lambda p, g: p - 1e-2 * g, run.trainable, grads)
    after = run.student_params(moved, run.frozen)
    assert np.abs(np.asarray(after["embedder"]["embedding"]) - np.asarray(own["embedder"]["embedding"])).max() > 0
