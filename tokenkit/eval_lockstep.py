"""`python -m tokenkit.eval_lockstep`: evaluates a token-level ensemble on lm-eval tasks.

    python -m tokenkit.eval_lockstep --gin_file=gin/ensembles/llama_qwen.gin \\
        --gin_file=gin/eval/tiny_world.gin --workdir=/tmp/eval_lockstep

The members come from `ensemble_models.models` (a `gin/ensembles/*.gin` file: each
member's checkpoint, tokenizer spec and `add_bos`), how their next-token distributions
combine from `ensemble_models.combine_strategy` (`mean_prob` or `mean_logits`), the
evaluation settings from `eval_lockstep.*` (see
`tokenkit.evaluation.harness.evaluate_lockstep`). Results as for `tokenkit.eval`.
"""

from __future__ import annotations

from lm_eval.utils import make_table

from tokenkit import entry, storage
from tokenkit.evaluation import harness


def main(workdir: storage.Location | None = None) -> None:
    results = harness.evaluate_lockstep(output_dir=workdir)
    if results and entry.process_index() == 0:
        print(make_table(results))


if __name__ == "__main__":
    entry.run(main, preemption_service=False)
