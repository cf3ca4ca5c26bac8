"""experiments/paper/: one Gin file per upstream config, each parsed, checked against the
upstream's values, and bound: the entrypoint it is for runs with it up to the point where
it would read a tokenizer or a model from the hub (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import gin
import pytest

import tokenkit.eval  # noqa: F401  (registers the configurables of every entrypoint)
import tokenkit.eval_lockstep  # noqa: F401
import tokenkit.train_zett_hn  # noqa: F401
from tokenkit import entry, losses
from tokenkit import zett as zett_lib
from tokenkit.data import assembly, pairs
from tokenkit.evaluation import ensemble, harness
from tokenkit.models import hypernet as hypernet_lib
from tokenkit.models.lora import LoraConfig
from tokenkit.training import optim, setup, trainer, zett_hn

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "experiments" / "paper"
UPSTREAM_GIT = Path("/work/.mirror/bminixhofer+tokenkit/repo")
FRAGMENTS = {"distill_common.gin"}  # included by the four distillation files
# The upstream's configs/*.yaml (its models/, optimizer/ and data/ fragments are inlined).
UPSTREAM_CONFIGS = {
    "cross_tokenizer_distill", "cross_tokenizer_distill_pt", "math_cross_tokenizer_distill",
    "math_same_tokenizer_distill", "train_zett_hn", "train_zett_hn_gemma2", "eval",
    "eval_lockstep", "eval_lockstep_mined", "zett", "compute_tokenizer_info",
    "compute_mined_mapping",
}
HEADER_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]

# The upstream trainer's defaults and the four distillation configs' shared values.
DISTILL = {
    "train.losses": ["alm_unbiased"], "train.steps": 5000,
    "learning_rate_schedule.warmup_steps": 2000, "learning_rate_schedule.learning_rate": 1e-5,
    "learning_rate_schedule.decay": "linear", "DataConfig.num_workers": 16,
    "train.log_interval": 10, "train.sync_interval": 100, "train.eval_interval": 5000,
    "train.save_interval": 5000, "build_run.train_model_mode": "lora", "LoraConfig.rank": 64,
    "LoraConfig.alpha": 64, "build_run.train_embeddings": True,
    "AlmOptions.binarization_temp": 100.0, "AlmOptions.alm_diff_fn": "binary_ce",
    "DataConfig.batch_size": 16, "make_optimizer.weight_decay": 0.01, "make_optimizer.b1": 0.9,
    "make_optimizer.b2": 0.95, "make_optimizer.eps": 1e-8, "make_optimizer.max_grad_norm": 1.0,
    "HypernetConfig.architecture": "transformer", "HypernetConfig.num_layers": 1,
    "HypernetConfig.residual": True, "HypernetConfig.residual_alpha": 1.0,
    "HypernetConfig.use_attention": False,
    "eval.tasks": ["arc_easy", "arc_challenge", "piqa", "hellaswag", "boolq", "arithmetic", "mmlu"],
    "eval.lengths": [128, 256, 512, 1024, 2048], "eval.tokens_per_batch": 8192,
    "eval.add_bos": True, "eval.chat_template_mode": "surround_instruct",
    "eval.lm_eval_kwargs": {"confirm_run_unsafe_code": True},
    "train.seed": 1234, "train.n_data_parallel": 1, "train.n_model_parallel": 8,
    "train.gradmag_probe": "last_layer", "build_run.dtype": "bfloat16",
    "build_run.pad_to_multiple_of": 64, "DataConfig.max_teacher_length": 512,
    "DataConfig.max_student_length": 512, "DataConfig.use_chat_template": True,
    "DataConfig.loss_mask_mode": None, "Aggregation.multitask_aggregation_fn": "mean",
    "DataConfig.eval_texts": 0, "DataConfig.eval_chats": 0,
}
GEMMA_TO_QWEN = {
    "build_run.student_model": "benjamin/gemma-2-2b-it-flax",
    "build_run.student_tokenizer": "google/gemma-2-2b-it:source=Gemma2",
    "build_run.target_tokenizer": "Qwen/Qwen2.5-1.5B:source=Qwen2:target=Gemma2",
    "AlmOptions.alm_mode": "append_space",
    "TokenizerPair.path": "artifacts/tokenizer_data/gemma2_to_qwen2",
    "TokenizerPair.tokenizer_pair_bias_threshold": 1e-4,
}
MATH = {
    "build_run.teacher_model": "benjamin/OpenMath2-Llama3.1-8B-flax",
    "build_run.teacher_tokenizer": "nvidia/OpenMath2-Llama3.1-8B:source=Llama3",
    "AlmOptions.alm_mode": "append_space",  # 'space_merge+append_space' upstream: see the file
    "TokenizerPair.tokenizer_pair_bias_threshold": 0.1,
    "train/make_source.hf_path": "benjamin/OpenMathInstruct-2-2M-formatted",
}
ZETT_HN = {
    "train_zett_hn.model": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T@refs/pr/8",
    "train_zett_hn.losses": ["sft"], "train_zett_hn.seed": 1234, "train_zett_hn.dtype": "bfloat16",
    "train_zett_hn.identity_steps": 0, "train_zett_hn.identity_lr": 3e-4,
    "train_zett_hn.identity_tokens": 16384, "train_zett_hn.steps": 200000,
    "train_zett_hn.num_workers": 64, "train_zett_hn.n_model_parallel": 8,
    "train_zett_hn.log_interval": 50, "train_zett_hn.eval_interval": 10000,
    "train_zett_hn.save_interval": 10000, "train_zett_hn.batch_size": 128,
    "learning_rate_schedule.learning_rate": 1e-5, "learning_rate_schedule.warmup_steps": 10000,
    "HypernetConfig.num_layers": 3, "HypernetConfig.num_heads": 16,
    "HypernetConfig.use_attention": True, "HypernetConfig.use_attention_mask": False,
    "HypernetConfig.shared": True, "HypernetConfig.multiply_hidden_dim_by_num_embeddings": False,
    "HypernetConfig.residual_alpha": 1.0,
    "TokenizerSamplerConfig.tokenizer_sample_mean": 32768,
    "TokenizerSamplerConfig.tokenizer_sample_std": 0,
    "TokenizerSamplerConfig.tokenizer_noise_std": 4.0,
    "TokenizerSamplerConfig.tokenizer_noise_mean": 1e-5,
    "TokenizerSamplerConfig.block_size": 128, "TokenizerSamplerConfig.hn_surface_maxlen": 8,
    "TokenizerSamplerConfig.pad_to_multiple_of": 128, "TokenizerSamplerConfig.add_prefix_space": True,
    "eval.tasks": ["piqa", "hellaswag", "arc_easy"], "eval.chat_template_mode": "direct_encode",
}
EXPECTED: dict[str, dict] = {
    "cross_tokenizer_distill": {**DISTILL, **GEMMA_TO_QWEN, "DataConfig.chat_template_mode": "direct_encode",
                                "train/make_source.hf_path": "allenai/tulu-3-sft-mixture"},
    "cross_tokenizer_distill_pt": {
        **DISTILL, **GEMMA_TO_QWEN, "DataConfig.chat_template_mode": "direct_encode_no_force_eos",
        "train/make_source.kind": "hf_saved", "train/make_source.paths": ["/lfs/dolmino_50B_medium"],
        "train/make_source.lang_code": "en",
    },
    "math_cross_tokenizer_distill": {
        **DISTILL, **MATH, "build_run.student_model": "benjamin/gemma-2-2b-it-flax",
        "build_run.student_tokenizer": "google/gemma-2-2b-it:source=Gemma2",
        "build_run.target_tokenizer": "google/gemma-2-2b-it:source=Gemma2",
        "build_run.tokens_to_add": HEADER_TOKENS,
        "TokenizerPair.path": "artifacts/tokenizer_data/math_llama3_to_gemma2",
    },
    "math_same_tokenizer_distill": {
        **DISTILL, **MATH, "build_run.student_model": "benjamin/Llama-3.2-3B-Instruct-flax",
        "build_run.target_tokenizer": "meta-llama/Llama-3.2-3B-Instruct:source=Llama3",
        "TokenizerPair.path": "artifacts/tokenizer_data/math_llama3_to_llama3",
    },
    "train_zett_hn": {**ZETT_HN, "train/make_source.hf_path": "allenai/madlad-400",
                      "train/make_source.streaming": True},
    "train_zett_hn_gemma2": {
        **ZETT_HN, "train_zett_hn.model": "benjamin/gemma-2-2b-flax",
        "train_zett_hn.tokenizer": "google/gemma-2-2b:source=Gemma2",
        "TokenizerSamplerConfig.add_prefix_space": False, "train/make_source.kind": "hf_saved",
        "train/make_source.paths": ["/lfs/dolmino_50B_medium"],
    },
    "eval": {
        "eval.model": "benjamin/gemma-2-2b-it-flax", "eval.tokenizer": "google/gemma-2-2b-it:source=Gemma2",
        "eval.tasks": ["piqa", "boolq", "arc_easy", "hellaswag"], "eval.tokens_per_batch": 4096,
        "eval.lengths": [128, 256, 512, 1024, 2048], "eval.add_bos": True,
        "eval.chat_template_mode": "surround_instruct",
        "expand_model.pretrained_model_name_or_path": None,
    },
    "eval_lockstep": {
        "ensemble_models.combine_strategy": "mean_prob", "eval_lockstep.tokens_per_batch": 4096,
        "eval_lockstep.tasks": ["arc_easy", "arc_challenge", "piqa", "boolq", "arithmetic", "mmlu",
                                "ifeval", "agieval_en", "agieval_cn"],
    },
    "eval_lockstep_mined": {"ensemble_models.combine_strategy": "mean_prob"},
    "zett": {
        "zett.model": "benjamin/gemma-2-2b-it-flax", "zett.tokenizer": "google/gemma-2-2b-it:source=Gemma2",
        "zett.target_tokenizer": "Qwen/Qwen2.5-1.5B:source=Qwen2:target=Gemma2",
        "zett.output_dir": "outputs/zett/gemma-2-2b-it-flax-fvt-qwen",
    },
    "compute_tokenizer_info": {
        "compute_tokenizer_info.teacher": "google/gemma-2-2b-it:source=Gemma2",
        "compute_tokenizer_info.student": "Qwen/Qwen2.5-1.5B:source=Qwen2:target=Gemma2",
        "compute_tokenizer_info.output_dir": "outputs/tokenizer_data/gemma2_to_qwen2",
        "compute_tokenizer_info.additive_smoothing": 1e-9,
    },
    "compute_mined_mapping": {
        "compute_mined_mapping.teacher": "google/gemma-2-2b-it:source=Gemma2",
        "compute_mined_mapping.student": "Qwen/Qwen2.5-1.5B:source=Qwen2:target=Gemma2",
        "compute_mined_mapping.output_dir": "outputs/tokenizer_data/gemma2_to_qwen2",
    },
}


def _tool(name: str):
    """Imports tools/<name>.py (registers its configurable); the module."""
    spec = importlib.util.spec_from_file_location(f"paper_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = {name: _tool(name) for name in ("compute_tokenizer_info", "compute_mined_mapping")}


def _query(key: str):
    """A bound value, Gin macros (`%NAME`) resolved."""
    value = gin.query_parameter(key)
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return gin.query_parameter("%" + value.scoped_selector.split("/")[0])
    return value


class Stop(Exception):
    """Raised where an entrypoint would first read from the hub."""


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_one_file_per_upstream_config():
    files = {p.stem for p in PAPER.glob("*.gin")} - {Path(f).stem for f in FRAGMENTS}
    assert files == UPSTREAM_CONFIGS == set(EXPECTED)


@pytest.mark.skipif(not UPSTREAM_GIT.is_dir(), reason="no upstream checkout here")
def test_the_list_is_the_upstream_configs_directory():
    listing = subprocess.run(["git", "-C", str(UPSTREAM_GIT), "ls-tree", "--name-only", "HEAD", "configs/"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert {Path(p).stem for p in listing if p.endswith(".yaml")} == UPSTREAM_CONFIGS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_values_are_the_upstreams(name):
    entry.parse_gin([str(PAPER / f"{name}.gin")], finalize=False)
    got = {key: _query(key) for key in EXPECTED[name]}
    assert got == EXPECTED[name]


def _stop(record: dict, key: str):
    def fake(*args, **kwargs):
        record.setdefault(key, []).append(args[0] if args else kwargs)
        raise Stop
    return fake


@pytest.mark.parametrize("name", ["cross_tokenizer_distill", "cross_tokenizer_distill_pt",
                                  "math_cross_tokenizer_distill", "math_same_tokenizer_distill"])
def test_distillation_configs_bind(name, monkeypatch, tmp_path):
    entry.parse_gin([str(PAPER / f"{name}.gin")], finalize=False)
    # The option classes accept what the file binds.
    data = assembly.DataConfig()
    pair = pairs.TokenizerPair()
    assert pair.unbiased_threshold == pair.space_merge_threshold == EXPECTED[name][
        "TokenizerPair.tokenizer_pair_bias_threshold"]
    loss_fns = losses.get_losses(list(gin.query_parameter("train.losses")),
                                 space_merge_threshold=pair.space_merge_threshold)
    assert [f.name for f in loss_fns] == ["alm_unbiased"]
    assert LoraConfig().rank == 64 and hypernet_lib.HypernetConfig().num_layers == 1
    schedule = optim.learning_rate_schedule(5000)
    assert float(schedule(2000)) == pytest.approx(1e-5) and float(schedule(5000)) == 0.0
    assert data.batch_size == 16
    # The trainer runs up to the first tokenizer it would read from the hub.
    seen: dict = {}
    monkeypatch.setattr(setup, "load_byteify_tokenizer", _stop(seen, "tokenizer"))
    with pytest.raises(Stop):
        trainer.train(tmp_path)
    assert seen["tokenizer"] == [EXPECTED[name].get("build_run.student_tokenizer",
                                                    "meta-llama/Llama-3.2-3B-Instruct:source=Llama3")]


def test_the_math_example_is_the_config_with_the_examples_overrides():
    entry.parse_gin(["experiments/gemma2_distill_from_openmath2_llama_gpu.gin"], finalize=False)
    assert gin.query_parameter("build_run.tokens_to_add") == HEADER_TOKENS
    assert gin.query_parameter("build_run.target_tokenizer") == "google/gemma-2-2b-it:source=Gemma2"
    assert gin.query_parameter("train.losses") == ["sft", "alm_unconstrained"]
    assert gin.query_parameter("AlmOptions.alm_mode") == "merge_by_space_prob+append_space"
    assert gin.query_parameter("learning_rate_schedule.warmup_steps") == 2000
    assert gin.query_parameter("learning_rate_schedule.learning_rate") == 5e-6
    assert gin.query_parameter("build_run.hypernet") is None
    assert gin.query_parameter("train.grad_acc_steps") == 4


@pytest.mark.parametrize("name", ["train_zett_hn", "train_zett_hn_gemma2"])
def test_hypernetwork_configs_bind(name, monkeypatch, tmp_path):
    entry.parse_gin([str(PAPER / f"{name}.gin")], finalize=False)
    seen = {}

    def fake_build(model, tokenizer, hypernet_config, max_parts, *, mesh, seed, dtype):
        seen.update(model=model, tokenizer=tokenizer, mesh=dict(mesh.shape), dtype=dtype,
                    hypernet=hypernet_config)
        raise Stop

    monkeypatch.setattr(zett_hn, "build", fake_build)
    with pytest.raises(Stop):
        zett_hn.train_zett_hn(tmp_path)
    assert seen["model"] == EXPECTED[name]["train_zett_hn.model"]
    assert seen["mesh"] == {"data": 1, "model": 8} and seen["dtype"] == "bfloat16"
    assert seen["hypernet"].num_layers == 3 and not seen["hypernet"].use_attention_mask


def test_eval_config_binds(monkeypatch, tmp_path):
    entry.parse_gin([str(PAPER / "eval.gin")], finalize=False)
    seen: dict = {}
    monkeypatch.setattr(harness, "load_eval_model", _stop(seen, "model"))
    with pytest.raises(Stop):
        harness.evaluate(output_dir=tmp_path)
    assert seen["model"] == ["benjamin/gemma-2-2b-it-flax"]


@pytest.mark.parametrize("name", ["eval_lockstep", "eval_lockstep_mined"])
def test_ensemble_configs_bind(name, monkeypatch, tmp_path):
    entry.parse_gin([str(PAPER / f"{name}.gin")], finalize=False)
    members, strategy = ensemble.ensemble_models()
    assert strategy == "mean_prob" and len(members) == 3
    mined = [m.mined_mapping for m in members]
    if name == "eval_lockstep_mined":
        # The pivot first, then the members with their mapping directories.
        assert members[0].tokenizer == "Qwen/Qwen2-1.5B-Instruct:source=Qwen2" and not members[0].add_bos
        assert mined == [None, "artifacts/tokenizer_data/gemma2_to_qwen2",
                         "artifacts/tokenizer_data/llama3_to_qwen2"]
    else:
        assert mined == [None, None, None]
    seen: dict = {}
    monkeypatch.setattr(harness, "load_eval_model", _stop(seen, "model"))
    monkeypatch.setattr(ensemble, "load_mined_mapping", _stop(seen, "mapping"))
    with pytest.raises(Stop):
        harness.evaluate_lockstep(output_dir=tmp_path)
    # Mappings are read before any model (cheap checks first).
    assert ("mapping" in seen) == (name == "eval_lockstep_mined")


def test_zett_config_binds(monkeypatch):
    entry.parse_gin([str(PAPER / "zett.gin")], finalize=False)
    seen: dict = {}
    monkeypatch.setattr(zett_lib, "load_byteify_tokenizer", _stop(seen, "tokenizer"))
    with pytest.raises(Stop):
        zett_lib.zett(None)
    assert seen["tokenizer"] == ["google/gemma-2-2b-it:source=Gemma2"]


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_tool_configs_bind(name, monkeypatch, tmp_path):
    entry.parse_gin([str(PAPER / f"{name}.gin")], finalize=False)
    module = TOOLS[name]
    seen: dict = {}
    monkeypatch.setattr(module, "load_byteify_tokenizer", _stop(seen, "tokenizer"))
    monkeypatch.chdir(tmp_path)  # the output directory is relative
    with pytest.raises(Stop):
        getattr(module, name)()
    assert seen["tokenizer"] == ["google/gemma-2-2b-it:source=Gemma2"]
    assert (tmp_path / "outputs" / "tokenizer_data" / "gemma2_to_qwen2").is_dir()
