"""Every Gin parameter a user can bind takes effect, or fails at parse time.

Gin hands a bound value to a configurable only where the caller does not pass that
argument itself; a binding of an argument the caller passes is silently ignored. So a
parameter takes effect exactly when (a) no call site in the package passes it, and (b)
the configurable reads it. The first two tests check both for every parameter of every
configurable the package registers (denylisted parameters are not bindable: binding
them fails at parse time). The others bind parameters to non-default values through the
real entry points and check the effect, including the ones that used to be ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import gin
import numpy as np
import pytest

import tokenkit.eval  # noqa: F401  (registers the configurables of every entrypoint)
import tokenkit.eval_lockstep  # noqa: F401
import tokenkit.info  # noqa: F401
import tokenkit.score  # noqa: F401
import tokenkit.zett  # noqa: F401
from tokenkit import entry
from tokenkit.training import trainer

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tokenkit"


def _configurables() -> list:
    registry = gin.config._REGISTRY
    selectors = sorted(registry._selector_map)
    return [registry[s] for s in selectors if registry[s].module.startswith("tokenkit")]


def _bindable(configurable) -> list[str]:
    signature = inspect.signature(configurable.wrapped)
    names = [
        name for name, p in signature.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name != "self"
    ]
    deny = set(configurable.denylist or ())
    return [n for n in names if n not in deny]


def _tokenkit_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names bound to tokenkit objects, names bound to tokenkit modules) in one file;
    functions and classes defined at the file's top level count as objects."""
    objects = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenkit"):
            base = REPO / node.module.replace(".", "/")
            for alias in node.names:
                is_module = (base / f"{alias.name}.py").exists() or (base / alias.name).is_dir()
                (modules if is_module else objects).add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names
                        if a.name.startswith("tokenkit")}
    return objects, modules


def _call_sites() -> list[tuple[Path, ast.Call, str]]:
    """Every call in the package of a name that resolves into tokenkit: (file, call, name)."""
    sites = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        objects, modules = _tokenkit_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in objects:
                sites.append((path, node, func.id))
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                  and func.value.id in modules):
                sites.append((path, node, func.attr))
    return sites


# (configurable, parameter) -> why a call site may pass it although it is bindable.
PASSED_ON_PURPOSE = {
    ("eval", "model"): "the in-run evaluation scores its own student; binding eval.model in "
                       "a training run is an error (training.evaluator)",
}


CONFIGURABLES = _configurables()
SITES = _call_sites()


def test_the_package_registers_its_configurables():
    names = {c.name for c in CONFIGURABLES}
    assert {"train", "build_run", "DataConfig", "TokenizerPair", "AlmOptions", "LoraConfig",
            "Checkpointer", "zett", "score", "eval"} <= names
    # Inner factories whose arguments the assembly passes are not configurable.
    assert not names & {"make_transformer", "replace_vocabulary", "trainable_mask"}


@pytest.mark.parametrize("configurable", CONFIGURABLES, ids=lambda c: c.name)
def test_no_call_site_passes_a_bindable_parameter(configurable):
    wrapped = configurable.wrapped
    target = wrapped.__name__
    signature = inspect.signature(wrapped)
    positional = [
        n for n, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
    ]
    bindable = set(_bindable(configurable))
    overridden = []
    for path, call, name in SITES:
        if name != target:
            continue
        passed = {kw.arg for kw in call.keywords if kw.arg is not None}
        passed |= set(positional[: len(call.args)])
        for param in sorted(passed & bindable):
            if (configurable.name, param) not in PASSED_ON_PURPOSE:
                overridden.append(f"{path.relative_to(REPO)}:{call.lineno} passes {param}")
    assert not overridden, (
        f"{configurable.name}: a Gin binding of these parameters would be ignored "
        f"(denylist them, or stop passing them): {overridden}"
    )


def _reads_in_body(function, name: str) -> bool:
    source = inspect.getsource(function)
    tree = ast.parse(textwrap.dedent(source))
    body = tree.body[0]
    nodes = list(ast.walk(body))
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "locals"
           for n in nodes):
        return True  # every argument is passed on through locals()
    return any(isinstance(n, ast.Name) and n.id == name for n in nodes)


def _read_as_attribute(name: str, owner: type) -> bool:
    """Whether `.name` is read anywhere in the package outside `owner`'s own fields."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Load):
                return True
    return False


@pytest.mark.parametrize("configurable", CONFIGURABLES, ids=lambda c: c.name)
def test_every_bindable_parameter_is_read(configurable):
    wrapped = configurable.wrapped
    unread = []
    for name in _bindable(configurable):
        if dataclasses.is_dataclass(wrapped):
            ok = _read_as_attribute(name, wrapped)
        elif inspect.isclass(wrapped):
            ok = _reads_in_body(wrapped.__init__, name)
        else:
            ok = _reads_in_body(wrapped, name)
        if not ok:
            unread.append(name)
    assert not unread, f"{configurable.name}: bindable but never read: {unread}"


# --------------------------------------------------------------------- by binding

@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _parse(*bindings: str) -> None:
    entry.parse_gin([], list(bindings), finalize=False)


@pytest.mark.parametrize("binding", [
    "make_transformer.remat_policy = 'full'",
    "replace_vocabulary.pad_to_multiple_of = 8",
    "trainable_mask.train_embeddings = False",
    "build_run.lora_rank = 8",
    "build_run.space_mask_mode = 'space'",
    "train.keep_checkpoints = 1",
    "train.tokenizer_pair_bias_threshold = 0.5",
    "Checkpointer.workdir = '/elsewhere'",
    "make_optimizer.schedule = None",
    "learning_rate_schedule.steps = 3",
])
def test_bindings_that_could_not_take_effect_fail_at_parse_time(binding):
    with pytest.raises(entry.GinConfigError, match="Bad --gin_param"):
        _parse(binding)


TINY_TEACHER = REPO / "data" / "models" / "tiny_teacher"
QWEN2 = REPO / "data" / "tokenizers" / "qwen2_bpe"
VALIDATION = REPO / "data" / "corpus" / "validation.jsonl"


def _run_bindings(*extra: str) -> list[str]:
    return [
        f"build_run.student_model = '{TINY_TEACHER}'",
        f"build_run.student_tokenizer = '{TINY_TEACHER}:source=Llama3'",
        f"train/make_source.paths = ['{VALIDATION}']",
        f"eval/make_source.paths = ['{VALIDATION}']",
        *extra,
    ]


def _build(*extra: str, losses=("sft", "alm_unconstrained")):
    import jax

    from tokenkit.data.pairs import TokenizerPair
    from tokenkit.models import make_mesh
    from tokenkit.training import setup

    _parse(*_run_bindings(*extra))
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    return setup.build_run(mesh, losses, 0, TokenizerPair())


def test_lora_bound_by_reference_sets_the_adapters():
    run = _build(
        f"build_run.target_tokenizer = '{QWEN2}:source=Qwen2:target=Llama3'",
        "build_run.train_model_mode = 'lora'", "build_run.lora = @LoraConfig()",
        "LoraConfig.rank = 8", "LoraConfig.alpha = 3.0", "LoraConfig.targets = ('query', 'down')",
    )
    assert run.lora.rank == 8 and run.lora.alpha == 3.0
    adapters = run.trainable["lora"]["layers"]
    assert set(adapters) == {"attention", "mlp"} and set(adapters["mlp"]) == {"down"}
    assert adapters["attention"]["query"]["a"].shape[-1] == 8
    assert run.student.module.lora_alpha == 3.0
    with pytest.raises(ValueError, match="only train in train_model_mode='lora'"):
        gin.clear_config()
        _build("build_run.lora = @LoraConfig()")


def test_compute_options_reach_both_models():
    run = _build("build_run.dtype = 'float32'", "build_run.remat_policy = 'dots'",
                 "build_run.attention_impl = 'xla'")
    for side in (run.student, run.teacher):
        assert side.module.remat_policy == "dots" and side.module.attention_impl == "xla"
        assert side.module.dtype == np.float32


def test_transfer_options_reach_the_student():
    run = _build(
        f"build_run.target_tokenizer = '{QWEN2}:source=Qwen2:target=Llama3'",
        "build_run.output_embeddings_mode = 'untie'", "build_run.pad_to_multiple_of = 128",
    )
    assert not run.student.config.tie_word_embeddings
    assert run.student.config.vocab_size % 128 == 0 and "lm_head" in run.trainable["student"]


def test_alm_space_mask_mode_reaches_the_loss_constants():
    default = _build()
    gin.clear_config()
    newline = _build("AlmOptions.space_mask_mode = 'newline'")
    assert int(newline.student_constants.space_mask.sum()) < int(default.student_constants.space_mask.sum())
    tokenizer = newline.student.tokenizer
    starts = [t.startswith("\u010a") for t in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
    assert np.asarray(newline.student_constants.space_mask)[: len(starts)].tolist() == starts


def test_tokenizer_pair_single_knob_sets_both_thresholds():
    from tokenkit.data.assembly import make_aligner
    from tokenkit.data.pairs import TokenizerPair

    _parse("TokenizerPair.tokenizer_pair_bias_threshold = 0.25")
    pair = TokenizerPair()
    assert pair.unbiased_threshold == 0.25 and pair.space_merge_threshold == 0.25
    gin.clear_config()
    run = _build("TokenizerPair.tokenizer_pair_bias_threshold = 0.25")
    assert all(l.options.space_merge_threshold == 0.25 for l in run.losses if l.name.startswith("alm"))
    gin.clear_config()
    _parse("TokenizerPair.bias_threshold = 0.5")
    assert TokenizerPair().unbiased_threshold == 0.5
    aligner = make_aligner(run.teacher.tokenizer, run.student.tokenizer, ("unconstrained",),
                           TokenizerPair(), None)
    assert aligner is not None
    gin.clear_config()
    _parse("TokenizerPair.tokenizer_pair_bias_threshold = 0.25", "AlmOptions.space_merge_threshold = 0.3")
    with pytest.raises(ValueError, match="cannot be combined with AlmOptions.space_merge_threshold"):
        TokenizerPair()


def test_checkpointer_keep_takes_effect(tmp_path):
    from tokenkit.training.checkpoint import Checkpointer

    _parse("Checkpointer.keep = 1", "Checkpointer.async_save = False")
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer._manager._options.max_to_keep == 1
    checkpointer.close()


def test_data_config_is_read_by_the_trainer(tmp_path):
    _parse(*_run_bindings(
        "train.steps = 1", "train.losses = ['sft']", "train.export = False",
        "DataConfig.batch_size = 3", "DataConfig.max_student_length = 24",
        "DataConfig.eval_texts = 1", "DataConfig.eval_chats = 1", "build_run.dtype = 'float32'",
        "train.n_model_parallel = 1", "Checkpointer.async_save = False",
    ))
    shapes = []
    real = trainer._to_global

    def spy(batch, shardings):
        shapes.append(batch.student.input_ids.shape)
        return real(batch, shardings)

    trainer._to_global = spy
    try:
        trainer.train(tmp_path)
    finally:
        trainer._to_global = real
    assert shapes == [(3, 24)]
