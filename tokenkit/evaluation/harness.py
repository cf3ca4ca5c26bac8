"""Running lm-eval tasks on tokenkit models: the functions behind the eval entrypoints.

    results = evaluate("data/models/x", "data/tokenizers/llama3_bpe:source=Llama3",
                       tasks=["tiny_world_mc"], limit=32)
    results = evaluate((config, params, tokenizer), tasks=[...])   # in memory (trainer)
    results = evaluate_lockstep([MemberSpec(...), MemberSpec(...)], tasks=[...])

Both are Gin-configurable (`eval.*` and `eval_lockstep.*`, see `gin/eval/`), build a
`TokenkitLM`, run `lm_eval.simple_evaluate` with a task manager that also knows the
local tasks in `data/eval_tasks/`, write lm-eval's results into `output_dir`
(`lm_eval_results.json`, plus `samples_<task>.jsonl` with `log_samples`) and return
lm-eval's results dict (`results["results"][task][metric]`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import lm_eval
from absl import logging
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable, make_table

from tokenkit import entry, storage
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.evaluation import ensemble, generate
from tokenkit.evaluation.lm import TokenkitLM
from tokenkit.evaluation.model import EvalModel, load_eval_model
from tokenkit.models import ModelConfig

DEFAULT_TASKS_DIR = entry.REPO_ROOT / "data" / "eval_tasks"
RESULTS_FILE = "lm_eval_results.json"

ModelRef = str | EvalModel | tuple[ModelConfig, Any, ByteifyTokenizer | str]


def task_manager(include_path: str | Path | Sequence[str | Path] | None = None) -> TaskManager:
    """lm-eval's task manager, also indexing `include_path` (default: `data/eval_tasks`
    when the repository is at hand)."""
    if include_path is None and DEFAULT_TASKS_DIR.is_dir():
        include_path = DEFAULT_TASKS_DIR
    if isinstance(include_path, (list, tuple)):
        include_path = [str(p) for p in include_path]
    elif include_path is not None:
        include_path = str(include_path)
    return TaskManager(include_path=include_path)


@gin.configurable("expand_model")
def expand_model_spec(
    pretrained_model_name_or_path: str | None = None, tokenizer_name: str | None = None
) -> tuple[str | None, str | None]:
    """The expand model of a byte-level model (upstream `expand_model.*` names)."""
    return pretrained_model_name_or_path, tokenizer_name


def as_eval_model(
    model: ModelRef,
    tokenizer: str | ByteifyTokenizer | None = None,
    *,
    add_bos: bool = True,
    dtype: str = "float32",
    param_dtype: str | None = "float32",
) -> EvalModel:
    """An `EvalModel` from a checkpoint path + tokenizer spec, an `EvalModel`, or an
    in-memory `(config, params, tokenizer)` triple."""
    if isinstance(model, EvalModel):
        return model
    if isinstance(model, tuple):
        if len(model) != 3:
            raise ValueError(
                f"An in-memory model is a (config, params, tokenizer) triple; got {len(model)} items"
            )
        config, params, triple_tokenizer = model
        return EvalModel.build(
            config, params, triple_tokenizer, add_bos=add_bos, dtype=dtype, name="in-memory model"
        )
    if tokenizer is None:
        raise ValueError(f"Model {model!r} needs a tokenizer spec (eval.tokenizer)")
    expand_path, expand_tokenizer = expand_model_spec()
    return load_eval_model(
        str(model), tokenizer, add_bos=add_bos, dtype=dtype, param_dtype=param_dtype,
        expand_model=expand_path, expand_tokenizer=expand_tokenizer,
    )


def run_tasks(
    lm: TokenkitLM,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    include_path: str | Path | Sequence[str | Path] | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    seed: int = 0,
    output_dir: str | Path | None = None,
    lm_eval_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on `lm`; writes the results into `output_dir` if given."""
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError("No tasks to evaluate (eval.tasks is empty)")
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        limit=limit,
        num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        task_manager=task_manager(include_path),
        log_samples=log_samples,
        bootstrap_iters=bootstrap_iters,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        **dict(lm_eval_kwargs or {}),
    )
    if results is None:  # only on non-zero ranks of a multi-process run
        return {}
    logging.info("lm-eval results:\n%s", make_table(results))
    if output_dir is not None:
        write_results(results, output_dir)
    return results


def write_results(results: Mapping[str, Any], output_dir: storage.Location) -> storage.epath.Path:
    """Writes `lm_eval_results.json` (everything but the samples) and, when present,
    one `samples_<task>.jsonl` per task, into a local or remote directory. In a
    multi-process run only process 0 writes (every process holds the same results)."""
    out = storage.path(output_dir)
    path = out / RESULTS_FILE
    if entry.process_index() != 0:
        return path
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in results.items() if k != "samples"}
    path.write_text(
        json.dumps(summary, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    for task, samples in (results.get("samples") or {}).items():
        with (out / f"samples_{task}.jsonl").open("w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
    logging.info("Wrote lm-eval results to %s", path)
    return path


# Arguments of `evaluate` / `evaluate_lockstep` that configure the `TokenkitLM` and the
# lm-eval run (the rest pick and load the models).
_LM_ARGS = ("lengths", "tokens_per_batch", "chat_template_mode", "do_sample", "temperature",
            "top_k", "top_p", "max_gen_toks", "seed")
_RUN_ARGS = ("tasks", "limit", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn",
             "include_path", "log_samples", "bootstrap_iters", "seed", "output_dir",
             "lm_eval_kwargs")


def _evaluate_models(models: list[EvalModel], combine_strategy: str,
                     args: Mapping[str, Any], mined_mappings: list | None = None) -> dict[str, Any]:
    pivot = {"mined_mappings": mined_mappings} if mined_mappings is not None else {}
    lm = TokenkitLM(models=models, combine_strategy=combine_strategy, **pivot,
                    **{k: args[k] for k in _LM_ARGS})
    return run_tasks(lm, **{k: args[k] for k in _RUN_ARGS})


def bound_tasks() -> tuple[str, ...]:
    """The lm-eval tasks bound to `eval.tasks` (none when unbound): what a training run
    evaluates at each evaluation (`training.evaluator`).

    Raises:
      ValueError: `eval.model` or `eval.tokenizer` is bound too; a training run scores its
        own student, so those bindings could not take effect.
    """
    for name in ("eval.model", "eval.tokenizer"):
        try:
            value = gin.query_parameter(name)
        except ValueError:
            continue
        raise ValueError(
            f"{name} = {value!r} is bound in a training run, which evaluates its own student "
            "(and teacher); bind it only for python -m tokenkit.eval."
        )
    try:
        return tuple(gin.query_parameter("eval.tasks"))
    except ValueError:
        return ()


@gin.configurable("eval", denylist=["output_dir"])
def evaluate(
    model: ModelRef = gin.REQUIRED,
    tokenizer: str | ByteifyTokenizer | None = None,
    *,
    tasks: Sequence[str] = gin.REQUIRED,
    lengths: Sequence[int] = generate.DEFAULT_LENGTHS,
    tokens_per_batch: int = 4096,
    add_bos: bool = True,
    chat_template_mode: str | None = "surround_instruct",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_gen_toks: int = 256,
    dtype: str = "float32",
    param_dtype: str | None = "float32",
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    include_path: str | Path | Sequence[str | Path] | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    seed: int = 0,
    lm_eval_kwargs: Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluates one model on lm-eval tasks (Gin: `eval.*`).

    Args:
      model: checkpoint directory / hub id, an `EvalModel`, or an in-memory
        `(config, params, tokenizer)` triple.
      tokenizer: tokenizer spec, for a checkpoint path. A byte-level model's expand model
        comes from `expand_model.pretrained_model_name_or_path` /
        `expand_model.tokenizer_name`.
      tasks: lm-eval task names (local ones from `data/eval_tasks` included).
      lengths, tokens_per_batch, add_bos, chat_template_mode, do_sample, temperature,
        top_k, top_p, max_gen_toks: see `TokenkitLM`.
      dtype, param_dtype: compute / parameter dtypes when loading.
      limit, num_fewshot, apply_chat_template, fewshot_as_multiturn, include_path,
        log_samples, bootstrap_iters, seed: as in `lm_eval.simple_evaluate`
        (`include_path` defaults to `data/eval_tasks`; `seed` also seeds sampling).
      lm_eval_kwargs: further `simple_evaluate` arguments.
      output_dir: where the results go (the entrypoint passes its workdir).
    """
    eval_model = as_eval_model(
        model, tokenizer, add_bos=add_bos, dtype=dtype, param_dtype=param_dtype
    )
    return _evaluate_models([eval_model], "mean_prob", locals())


@gin.configurable("eval_lockstep", denylist=["output_dir"])
def evaluate_lockstep(
    models: Sequence[ensemble.MemberSpec | Mapping[str, Any] | EvalModel] | None = None,
    combine_strategy: str | None = None,
    *,
    tasks: Sequence[str] = gin.REQUIRED,
    lengths: Sequence[int] = generate.DEFAULT_LENGTHS,
    tokens_per_batch: int = 4096,
    chat_template_mode: str | None = "surround_instruct",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_gen_toks: int = 256,
    dtype: str = "float32",
    param_dtype: str | None = "float32",
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    include_path: str | Path | Sequence[str | Path] | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    seed: int = 0,
    lm_eval_kwargs: Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluates a token-level ensemble on lm-eval tasks (Gin: `eval_lockstep.*`).

    Args:
      models: the members (`MemberSpec`s, their dicts, or `EvalModel`s); default: the
        ensemble a `gin/ensembles/*.gin` file defines (`ensemble_models.models`). Members
        with their own tokenizers name a `mined_mapping` to the first's (the pivot's)
        vocabulary (`ensemble` module docstring).
      combine_strategy: default: `ensemble_models.combine_strategy`.
      Others: as `evaluate` (each member has its own `add_bos`).
    """
    if models is None:
        models, default_strategy = ensemble.ensemble_models()
        combine_strategy = combine_strategy or default_strategy
    combine_strategy = combine_strategy or "mean_prob"
    specs = [m if isinstance(m, EvalModel) else ensemble.MemberSpec.from_dict(i, m)
             for i, m in enumerate(models)]
    # MinED mappings (members with their own tokenizers, through the first as pivot) are
    # read before any model, so a missing one fails fast.
    mined = [None if isinstance(s, EvalModel) or s.mined_mapping is None
             else ensemble.load_mined_mapping(s.mined_mapping) for s in specs]
    members = [s if isinstance(s, EvalModel) else load_eval_model(
        s.pretrained, s.tokenizer, add_bos=s.add_bos, dtype=dtype, param_dtype=param_dtype,
        expand_model=s.expand_model, expand_tokenizer=s.expand_tokenizer,
    ) for s in specs]
    logging.info(
        "Lockstep ensemble of %d models (%s), combine_strategy=%s%s",
        len(members), ", ".join(m.name for m in members), combine_strategy,
        ", through the first member's vocabulary (MinED mappings)" if any(
            m is not None for m in mined) else "",
    )
    return _evaluate_models(members, combine_strategy, locals(),
                            mined if any(m is not None for m in mined) else None)
