"""Evaluation inside a training run: how close the student is to the teacher.

At every evaluation the trainer scores student and teacher on the *same* validation
bytes (so tokenizers compare):

- `bits_per_byte`: whole validation texts (`text` records);
- `answer_bits_per_byte`: the final, assistant message of validation conversations given
  the rest through each family's chat template (template tokens only condition);
- optionally lm-eval tasks (the frozen teacher is scored on them once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
from absl import logging

from tokenkit import prompts
from tokenkit.data import sources
from tokenkit.evaluation import harness, scoring
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import merge_lora
from tokenkit.training import setup as setup_lib


def bits_per_byte(side, variables, tokenizer, texts, max_length, expansion=None) -> float:
    """Bits per UTF-8 byte of whole texts (bos, where the family has one, conditions)."""
    results = scoring.score_texts(
        side.model, variables, tokenizer, texts, max_length=max_length,
        expansion=expansion, show_progress=False,
    )
    n_bytes = sum(r.n_bytes for r in results)
    return -sum(r.loglik for r in results) / math.log(2) / max(n_bytes, 1)


def answer_bits_per_byte(side, variables, tokenizer, chats, expansion=None) -> float:
    """Bits per byte of each conversation's final (assistant) message given the rest.

    The prompt goes through the slot-marker chat template of the tokenizer's family; the
    answer's own tokens are scored, so every tokenizer is measured on the same bytes.
    """
    sequences, starts, n_bytes = [], [], 0
    for messages in chats:
        prompt = prompts.preprocess_messages(messages[:-1], add_generation_prompt=True)
        prompt_ids = list(prompts.encode_prompt(prompt, tokenizer).ids)
        answer_ids = list(prompts.encode_prompt(messages[-1]["content"], tokenizer).ids)
        sequences.append(prompt_ids + answer_ids)
        starts.append(len(prompt_ids))
        n_bytes += len(messages[-1]["content"].encode("utf-8"))
    scores = scoring.score_sequences(
        side.model, variables, sequences, starts, num_real_tokens=len(tokenizer),
        expansion=expansion, pad_id=tokenizer.pad_token_id or 0, show_progress=False,
    )
    return -sum(s.loglik for s in scores) / math.log(2) / max(n_bytes, 1)


class Evaluator:
    """Scores a run's student and teacher (see the module docstring).

    Args:
      run: the run's setup.
      tasks: lm-eval tasks (settings from Gin `eval.*`); results also go to
        `workdir/lm_eval/<side>_step_<n>/`.
      eval_texts, eval_chats: how many validation texts / conversations to score, read
        from the `eval/make_source` source.
      max_length: longest forward pass for texts (longer ones are windowed).
    """

    def __init__(self, run: setup_lib.RunSetup, tasks: Sequence[str], workdir: Path, *,
                 eval_texts: int, eval_chats: int, max_length: int):
        self.run = run
        self.max_length = max_length
        self.tasks = tuple(tasks)
        self.workdir = workdir
        self._teacher_tasks: dict[str, float] | None = None
        with gin.config_scope("eval"):
            source = sources.make_source()
        self.texts: list[str] = []
        self.chats: list[list[dict]] = []
        for i in range(len(source)):
            record = source[i]
            if record.get("messages") and record["messages"][-1]["role"] == "assistant":
                if len(self.chats) < eval_chats:
                    self.chats.append(record["messages"])
            elif record.get("text") and len(self.texts) < eval_texts:
                self.texts.append(record["text"])
            if len(self.texts) >= eval_texts and len(self.chats) >= eval_chats:
                break

    def _scores(self, side, params, expansion, name: str) -> dict[str, float]:
        out = {}
        variables = {"params": params}
        if self.texts:
            out[f"{name}/bits_per_byte"] = bits_per_byte(
                side, variables, side.tokenizer, self.texts, self.max_length, expansion)
        if self.chats:
            out[f"{name}/answer_bits_per_byte"] = answer_bits_per_byte(
                side, variables, side.tokenizer, self.chats, expansion)
        return out

    def _student_params(self, state: Any, frozen: Any) -> dict:
        params = self.run.student_params(state.params, frozen)
        if state.params.get("lora"):
            params = merge_lora(params, state.params["lora"], alpha=self.run.lora_config.alpha)
        return params

    def _tasks(self, side, params, expansion, step: int, name: str) -> dict[str, float]:
        model = EvalModel.create(side.config, params, side.tokenizer, expansion=expansion,
                                 name=name)
        results = harness.evaluate(
            model, tasks=self.tasks,
            output_dir=self.workdir / "lm_eval" / f"{name}_step_{step}",
        )
        out = {}
        for task, metrics in results.get("results", {}).items():
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and "stderr" not in key:
                    out[f"{name}/{task}/{key.split(',')[0]}"] = float(value)
        return out

    def __call__(self, state: Any, frozen: Any, step: int) -> dict[str, float]:
        """Scores at `step`; `state.params` / `frozen` are the trainer's two trees."""
        run = self.run
        params = self._student_params(state, frozen)
        out = self._scores(run.student, params, run.expansion, "student")
        teacher_params = None
        if run.teacher is not None:
            teacher_params = run.teacher_params(state.params, frozen)
            out.update(self._scores(run.teacher, teacher_params, None, "teacher"))
        if self.tasks:
            out.update(self._tasks(run.student, params, run.expansion, step, "student"))
            if teacher_params is not None:
                if self._teacher_tasks is None:  # the teacher is frozen: score it once
                    self._teacher_tasks = self._tasks(run.teacher, teacher_params, None, step,
                                                      "teacher")
                out.update(self._teacher_tasks)
        return out


def report(result: Mapping[str, Any]) -> None:
    """Prints how close the student came to the teacher."""
    for key, what in (("bits_per_byte", "validation texts"),
                      ("answer_bits_per_byte", "validation answers")):
        student = result.get(f"student/{key}")
        if student is None:
            continue
        teacher = result.get(f"teacher/{key}")
        line = f"Student bits per byte on the {what}: {student:.4f}"
        if teacher is not None:
            line += f"; teacher {teacher:.4f} (student/teacher = {student / teacher:.3f})"
        print(line)
        logging.info("%s", line)


