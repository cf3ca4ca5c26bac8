"""`python -m tokenkit.eval`: evaluates one model on lm-eval tasks.

    python -m tokenkit.eval --gin_file=gin/eval/tiny_world.gin \\
        --gin_param='eval.model="data/models/my_model"' \\
        --gin_param='eval.tokenizer="data/tokenizers/llama3_bpe:source=Llama3"' \\
        --workdir=/tmp/eval

Everything is Gin (`eval.*`, see `tokenkit.evaluation.harness.evaluate`); a byte-level
model's expand model is `expand_model.pretrained_model_name_or_path` /
`expand_model.tokenizer_name`. lm-eval's results go to `WORKDIR/lm_eval_results.json`
(and `samples_<task>.jsonl` with `eval.log_samples = True`); the table is printed.
"""

from __future__ import annotations

from lm_eval.utils import make_table

from tokenkit import entry, storage
from tokenkit.evaluation import harness


def main(workdir: storage.Location | None = None) -> None:
    results = harness.evaluate(output_dir=workdir)
    if results and entry.process_index() == 0:
        print(make_table(results))


if __name__ == "__main__":
    entry.run(main, preemption_service=False)
