"""How close a transferred student came to its teacher: the table of a transfer run.

    python tools/benchmarks/transfer_report.py --workdir=workdirs/smollm2_to_qwen2

Reads the run's operative config (`workdir/operative_config.gin`: the teacher model and
tokenizer, the target tokenizer, the transfer settings) and scores, on held-out text that
neither training nor validation saw:

- the teacher (the original model with its own tokenizer),
- the zero-shot student (the same `models.transfer.transfer` the run started from: FVT,
  with input-id expansion where the run used it),
- the trained student (the run's export, `workdir/export`),

with bits per byte of held-out prose (`--prose`, one `text` per record) and of the final
assistant answers of held-out chats (`--chats`), and, with `--questions`, how many of a
fixed set of simple questions each student answers (greedily, through the chat template)
exactly as the teacher does. Prints a table and writes `workdir/transfer_report.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gin
from absl import app, flags, logging

from tokenkit import entry
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.data import sources
from tokenkit.evaluation import agreement
from tokenkit.evaluation.model import EvalModel, load_eval_model
from tokenkit.models import load_pretrained
from tokenkit.models.transfer import transfer
from tokenkit.training import evaluator
from tokenkit.training import trainer  # noqa: F401  (registers the configurables the config binds)

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A finished training run (operative_config.gin, export/).",
                        required=True)
    flags.DEFINE_string("prose", "data/real/test_en_passages.jsonl", "Held-out prose (JSONL `text`).")
    flags.DEFINE_string("chats", "data/real/chat/test.jsonl", "Held-out chats (JSONL `messages`).")
    flags.DEFINE_integer("max_prose", 60, "Prose records scored.")
    flags.DEFINE_integer("max_chats", 60, "Chats whose last answer is scored.")
    flags.DEFINE_string("questions", "data/real/chat/questions.jsonl",
                        "Questions with the teacher's answers (JSONL) for the answer-agreement "
                        "count (evaluation.agreement); empty: skipped.")
    flags.DEFINE_integer("max_length", 1024, "Longest forward pass of the scoring (tokens).")


def _records(path: str, kind: str, limit: int) -> list:
    out = []
    for record in sources.iter_records(sources.JsonlSource([path])):
        value = record.get(kind)
        if value:
            out.append(value)
        if len(out) >= limit:
            break
    return out


def run_settings(workdir: Path) -> dict:
    """The teacher and the transfer of a run, read from its operative config."""
    gin.clear_config()
    entry.parse_gin([], [(workdir / entry.OPERATIVE_CONFIG_NAME).read_text()], finalize=False)

    def query(name, default=None):
        try:
            return gin.query_parameter(f"build_run.{name}")
        except ValueError:
            return default

    settings = {
        "teacher_model": query("student_model"),
        "teacher_tokenizer": query("student_tokenizer"),
        "target_tokenizer": query("target_tokenizer"),
        "expand_input_ids": query("expand_input_ids", False),
        "output_embeddings_mode": query("output_embeddings_mode", "preserve"),
        "init": query("init", "fvt"),
    }
    gin.clear_config()
    if settings["target_tokenizer"] is None:
        raise ValueError(f"{workdir} is not a transfer run (no build_run.target_tokenizer).")
    return settings


def score(model: EvalModel, prose: list[str], chats: list, max_length: int) -> dict:
    start = time.perf_counter()
    out = {
        "prose_bits_per_byte": evaluator.bits_per_byte(model, prose, max_length),
        "answer_bits_per_byte": evaluator.answer_bits_per_byte(model, chats),
    }
    logging.info("%s scored in %.0fs: %s", model.name, time.perf_counter() - start, out)
    return out


def report(workdir: Path) -> dict:
    settings = run_settings(workdir)
    prose = _records(FLAGS.prose, "text", FLAGS.max_prose)
    chats = _records(FLAGS.chats, "messages", FLAGS.max_chats)
    teacher = load_eval_model(settings["teacher_model"], settings["teacher_tokenizer"])
    target = load_byteify_tokenizer(settings["target_tokenizer"])
    config, params = load_pretrained(settings["teacher_model"])
    moved = transfer(config, params, teacher.tokenizer, target, init=settings["init"],
                     output_embeddings_mode=settings["output_embeddings_mode"],
                     expand_input_ids=settings["expand_input_ids"])
    zero_shot = EvalModel.build(moved.config, moved.params, target, expansion=moved.expansion,
                                name="zero-shot student")
    expand = dict(expand_model=settings["teacher_model"],
                  expand_tokenizer=settings["teacher_tokenizer"]) if settings["expand_input_ids"] else {}
    trained = load_eval_model(str(workdir / trainer.EXPORT_DIR), target, **expand)
    rows = {"teacher": score(teacher, prose, chats, FLAGS.max_length),
            f"{settings['init']} (zero-shot)": score(zero_shot, prose, chats, FLAGS.max_length),
            "after training": score(trained, prose, chats, FLAGS.max_length)}
    if FLAGS.questions:
        questions = agreement.load_questions(FLAGS.questions)
        for key, model in ((f"{settings['init']} (zero-shot)", zero_shot), ("after training", trained)):
            result = agreement.answer_agreement(model, questions, show_progress=False)
            rows[key]["answers_like_teacher"] = {"exact": result.exact, "first_sentence":
                                                 result.first_sentence, "total": result.n}
            rows[key]["answers"] = [dict(a) for a in result.answers]
    result = {"settings": settings, "prose": FLAGS.prose, "chats": FLAGS.chats,
              "n_prose": len(prose), "n_chats": len(chats), "rows": rows}
    (workdir / "transfer_report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(result: dict) -> None:
    rows = result["rows"]
    teacher = rows["teacher"]
    print(f"{'model':<22} {'prose bpb':>10} {'x teacher':>9} {'answer bpb':>10} {'x teacher':>9} {'answers':>8}")
    for name, row in rows.items():
        answers = row.get("answers_like_teacher")
        answers = "" if answers is None else f"{answers['exact']}/{answers['total']}"
        print(f"{name:<22} {row['prose_bits_per_byte']:>10.4f} "
              f"{row['prose_bits_per_byte'] / teacher['prose_bits_per_byte']:>9.3f} "
              f"{row['answer_bits_per_byte']:>10.4f} "
              f"{row['answer_bits_per_byte'] / teacher['answer_bits_per_byte']:>9.3f} {answers:>8}")
    print(f"({result['n_prose']} held-out passages of {result['prose']}, {result['n_chats']} chats of "
          f"{result['chats']})")


def main(argv) -> None:
    del argv
    print_table(report(Path(FLAGS.workdir)))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
