"""Evaluation inside a training run: how close the student is to the teacher.

At every evaluation the trainer scores student and teacher on the *same* validation
bytes (so tokenizers compare):

- `bits_per_byte`: whole validation texts (`text` records);
- `answer_bits_per_byte`: the final, assistant message of validation conversations given
  the rest through each family's chat template (template tokens only condition);
- the lm-eval tasks of `eval.tasks`, when bound, with the other `eval.*` settings (the
  frozen teacher is scored on them once).
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


def bits_per_byte(model: EvalModel, texts: Sequence[str], max_length: int) -> float:
    """Bits per UTF-8 byte of whole texts (bos, where the family has one, conditions)."""
    return scoring.bits_per_byte(
        scoring.score_texts(model, texts, max_length=max_length, show_progress=False)
    )


def answer_bits_per_byte(model: EvalModel, chats: Sequence[Sequence[Mapping[str, str]]]) -> float:
    """Bits per byte of each conversation's final (assistant) message given the rest.

    The conversation goes through the slot-marker chat template of the tokenizer's
    family (`prompts.encode_prompt`); the final message's content tokens are scored, so
    every tokenizer is measured on the same bytes.
    """
    sequences, starts, n_bytes = [], [], 0
    for messages in chats:
        encoded = prompts.encode_prompt(prompts.preprocess_messages(messages), model.tokenizer)
        answer = encoded.mask(roles=("assistant",), parts=("content",), message=-1)
        if not any(answer):
            continue  # an empty answer has no bytes to score
        first, last = answer.index(True), len(answer) - answer[::-1].index(True)
        sequences.append(list(encoded.ids[:last]))
        starts.append(first)
        n_bytes += len(messages[-1]["content"].encode("utf-8"))
    scores = scoring.score_sequences(model, sequences, starts, show_progress=False)
    return -sum(s.loglik for s in scores) / math.log(2) / max(n_bytes, 1)


class Evaluator:
    """Scores a run's student and teacher (see the module docstring).

    Args:
      run: the run's setup.
      eval_texts, eval_chats: how many validation texts / conversations to score, read
        from the `eval/make_source` source.
      max_length: longest forward pass for texts (longer ones are windowed).
    """

    def __init__(self, run: setup_lib.RunSetup, workdir: Path, *,
                 eval_texts: int, eval_chats: int, max_length: int):
        self.run = run
        self.max_length = max_length
        self.tasks = harness.bound_tasks()
        self.workdir = workdir
        self._teacher_tasks: dict[str, float] | None = None
        with gin.config_scope("eval"):
            source = sources.make_source()
        self.texts: list[str] = []
        self.chats: list[list[dict]] = []
        for record in sources.iter_records(source):
            if record.get("messages") and record["messages"][-1]["role"] == "assistant":
                if len(self.chats) < eval_chats:
                    self.chats.append(record["messages"])
            elif record.get("text") and len(self.texts) < eval_texts:
                self.texts.append(record["text"])
            if len(self.texts) >= eval_texts and len(self.chats) >= eval_chats:
                break

    def _scores(self, model: EvalModel) -> dict[str, float]:
        out = {}
        if self.texts:
            out[f"{model.name}/bits_per_byte"] = bits_per_byte(model, self.texts, self.max_length)
        if self.chats:
            out[f"{model.name}/answer_bits_per_byte"] = answer_bits_per_byte(model, self.chats)
        return out

    def _student_params(self, state: Any, frozen: Any) -> dict:
        params = self.run.student_params(state.params, frozen)
        if state.params.get("lora"):
            params = merge_lora(params, state.params["lora"], alpha=self.run.lora.alpha)
        return params

    def _tasks(self, model: EvalModel, step: int) -> dict[str, float]:
        name = model.name
        results = harness.evaluate(
            model,
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
        student = EvalModel.of(run.student, self._student_params(state, frozen))
        out = self._scores(student)
        teacher = None
        if run.teacher is not None:
            teacher = EvalModel.of(run.teacher, run.teacher_params(state.params, frozen))
            out.update(self._scores(teacher))
        if self.tasks:
            out.update(self._tasks(student, step))
            if teacher is not None:
                if self._teacher_tasks is None:  # the teacher is frozen: score it once
                    self._teacher_tasks = self._tasks(teacher, step)
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


