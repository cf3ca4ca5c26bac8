"""Loaders of the tiny-world eval tasks' data files (lm-eval `custom_dataset` hooks).

lm-eval resolves `dataset_kwargs.data_files` against the working directory, so the YAMLs
point at these functions instead: they read the JSONL next to this file, wherever lm-eval
runs. The files are built by `python -m tools.tiny_world.make_eval_tasks`.
"""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _load(name: str) -> datasets.DatasetDict:
    with open(HERE / name, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def load_mc(**kwargs) -> datasets.DatasetDict:
    """`mc.jsonl`: question, choices, label (index of the right choice), task, lang."""
    del kwargs  # lm-eval passes the task's metadata
    return _load("mc.jsonl")


def load_gen(**kwargs) -> datasets.DatasetDict:
    """`gen.jsonl`: question, answer, task, lang."""
    del kwargs
    return _load("gen.jsonl")
