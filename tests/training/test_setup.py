"""The pieces of a run's setup, one by one, and `build_run` for each kind of run."""

from pathlib import Path

import gin
import jax
import numpy as np
import pytest

from tokenkit.data.pairs import TokenizerPair
from tokenkit.models import DEFAULT_RULES, LoraConfig, init_lora, make_mesh
from tokenkit.training import setup

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "data" / "models" / "tiny_teacher"
TEACHER_SPEC = f"{TEACHER}:source=Llama3"
GEMMA2 = f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2"
QWEN2_MODEL = REPO / "data" / "models" / "tiny_teacher_qwen2"


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(1, 1, devices=jax.devices()[:1])


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_load_model_reads_a_checkpoint_or_initialises_a_config(mesh):
    config, params = setup.load_model(str(TEACHER), None, mesh=mesh, rules=DEFAULT_RULES, seed=0)
    assert config.vocab_size == 4096 and params["embedder"]["embedding"].shape == (4096, config.hidden_size)
    small = setup.random_init_config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    _, a = setup.load_model(None, small, mesh=mesh, rules=DEFAULT_RULES, seed=3)
    _, b = setup.load_model(None, small, mesh=mesh, rules=DEFAULT_RULES, seed=3)
    _, c = setup.load_model(None, small, mesh=mesh, rules=DEFAULT_RULES, seed=4)
    np.testing.assert_array_equal(a["embedder"]["embedding"], b["embedder"]["embedding"])
    assert not np.array_equal(a["embedder"]["embedding"], c["embedder"]["embedding"])
    with pytest.raises(ValueError, match="a config to train from scratch"):
        setup.load_model(None, None, mesh=mesh, rules=DEFAULT_RULES, seed=0)


@pytest.mark.parametrize("mode, embeddings, trained", [
    ("full", True, {"embedder", "layers", "final_norm"}),
    ("embeddings", True, {"embedder"}),
    ("lora", True, {"embedder"}),
    ("lora", False, set()),
])
def test_partition_splits_by_mode(mesh, mode, embeddings, trained):
    config, params = setup.load_model(str(TEACHER), None, mesh=mesh, rules=DEFAULT_RULES, seed=0)
    lora = init_lora(jax.random.key(0), config, LoraConfig(rank=2)) if mode == "lora" else None
    trainable, frozen, mask = setup.partition(params, lora, mode, train_embeddings=embeddings)
    assert set(trainable) == trained
    assert set(trainable) | set(frozen) == set(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)


def _build(mesh, *bindings, losses=("sft", "alm_unconstrained"), pair=None):
    gin.parse_config([f"build_run.student_model = '{TEACHER}'",
                      f"build_run.student_tokenizer = '{TEACHER_SPEC}'",
                      "build_run.dtype = 'float32'", *bindings])
    return setup.build_run(mesh, losses, 0, pair)


def test_same_tokenizer_run_has_no_teacher_and_the_family_ids(mesh):
    run = _build(mesh, losses=("sft",))
    assert run.teacher is None and run.teacher_constants is None and run.transfer_stats is None
    config = run.student.config
    tokenizer = run.student.tokenizer
    assert config.bos_token_id == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert set(run.trainable["student"]) == {"embedder", "layers", "final_norm"}


def test_transfer_run_shares_nothing_it_trains_and_builds_the_constants(mesh):
    run = _build(mesh, f"build_run.target_tokenizer = '{GEMMA2}'",
                 "build_run.train_model_mode = 'lora'", "build_run.lora = @LoraConfig()",
                 "LoraConfig.rank = 4")
    assert run.transfer_stats.total == len(run.student.tokenizer) == 4000
    assert run.student.config.vocab_size == 4032 and run.teacher.config.vocab_size == 4096
    assert run.teacher_shares_student and set(run.frozen["teacher"]) == {"embedder"}
    teacher = run.teacher_params(run.trainable, run.frozen)
    assert teacher["embedder"]["embedding"].shape == (4096, run.teacher.config.hidden_size)
    assert teacher["layers"] is run.frozen["student"]["layers"]  # shared, not copied
    # Constants cover the padded vocabularies; padding rows are not real tokens.
    assert run.student_constants.vocab_mask.shape == (4032,)
    assert int(run.student_constants.vocab_mask.sum()) == 4000
    assert run.student.expansion is None


def test_cross_tokenizer_run_loads_a_separate_teacher(mesh):
    run = _build(mesh, f"build_run.teacher_model = '{QWEN2_MODEL}'",
                 f"build_run.teacher_tokenizer = '{QWEN2_MODEL}:source=Qwen2'")
    assert not run.teacher_shares_student
    assert run.teacher.tokenizer.family.name == "Qwen2" and run.student.tokenizer.family.name == "Llama3"
    assert run.teacher.config.vocab_size == 3008
    sh = run.frozen_shardings["teacher"]
    assert jax.tree.structure(sh) == jax.tree.structure(run.frozen["teacher"])


def test_byte_level_run_carries_its_expansion(mesh):
    run = _build(mesh, f"build_run.target_tokenizer = '{TEACHER_SPEC}:conversion=byte'",
                 "build_run.expand_input_ids = True", "build_run.output_embeddings_mode = 'untie'")
    assert run.student.expansion is not None
    assert "expand_embedder" in run.frozen["student"]
    assert not run.student.config.tie_word_embeddings


def test_pair_data_and_mined_mapping(mesh):
    pair = TokenizerPair(path=str(REPO / "data" / "tokenizer_pairs" / "llama3_bpe__gemma2_sp"))
    run = _build(mesh, f"build_run.target_tokenizer = '{GEMMA2}'",
                 losses=("sft", "baseline_mined"), pair=pair)
    assert run.mined_mapping is not None and len(run.mined_mapping) == 4000
    with pytest.raises(ValueError, match="baseline_mined needs TokenizerPair.path"):
        gin.clear_config()
        _build(mesh, f"build_run.target_tokenizer = '{GEMMA2}'", losses=("sft", "baseline_mined"))


def test_mined_max_distance_leaves_unshared_tokens_without_a_counterpart(mesh):
    pair = TokenizerPair(path=str(REPO / "data" / "tokenizer_pairs" / "llama3_bpe__gemma2_sp"))
    full = _build(mesh, f"build_run.target_tokenizer = '{GEMMA2}'",
                  losses=("sft", "baseline_mined"), pair=pair).mined_mapping
    gin.clear_config()
    run = _build(mesh, f"build_run.target_tokenizer = '{GEMMA2}'", "MinedOptions.max_distance = 0",
                 losses=("sft", "baseline_mined"), pair=pair)
    limited = np.asarray(run.mined_mapping)
    teacher_vocab = run.teacher.tokenizer.get_vocab()
    shared = np.array([run.student.tokenizer.convert_ids_to_tokens(i) in teacher_vocab
                       for i in range(len(limited))])
    assert 0 < shared.sum() < len(limited)
    np.testing.assert_array_equal(limited[shared], np.asarray(full)[shared])
    assert (limited[~shared] == -1).all()


@pytest.mark.parametrize("binding, message", [
    ("build_run.train_model_mode = 'adapters'", "valid: full, lora, embeddings"),
    ("build_run.output_embeddings_mode = 'split'", "valid: preserve, untie"),
    ("build_run.init = 'random'", "valid: fvt"),
    ("build_run.teacher_model = 'x'", "must be given together"),
    ("build_run.lora = @LoraConfig()", "only train in train_model_mode='lora'"),
])
def test_bad_options_name_the_valid_ones(mesh, binding, message):
    with pytest.raises(ValueError, match=message):
        _build(mesh, binding)
