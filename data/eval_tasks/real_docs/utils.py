"""Loader of the `real_docs_mc` task's data (an lm-eval `custom_dataset` hook).

lm-eval resolves `dataset_kwargs.data_files` against the working directory, so the YAML
names this function, which reads the `mc.jsonl` beside it wherever lm-eval runs. The
file is built by `python -m tools.real_eval_tasks`.
"""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_mc(**kwargs) -> datasets.DatasetDict:
    """`mc.jsonl`: context, choices, label (index of the true next paragraph), document."""
    del kwargs  # lm-eval passes the task's metadata
    with open(HERE / "mc.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
