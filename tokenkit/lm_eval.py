"""`python -m tokenkit.lm_eval`: lm-eval's own command line, with `--model tokenkit`.

    python -m tokenkit.lm_eval --model tokenkit \\
        --model_args pretrained=DIR,tokenizer=data/tokenizers/llama3_bpe:source=Llama3 \\
        --tasks tiny_world_mc,tiny_world_gen --include_path data/eval_tasks --limit 32

The released `lm_eval` command only knows the backends of modules it imports itself;
this entry imports ours (`tokenkit.evaluation.lm`, which registers `tokenkit`) and hands
over to lm-eval's command line unchanged, so every lm-eval flag works as documented
(`--apply_chat_template`, `--num_fewshot`, `--output_path`, `--log_samples`, ...).
Unlike the other entrypoints, it therefore takes lm-eval's flags, not Gin.

`--model_args` (comma-separated `key=value`): `pretrained`, `tokenizer` (a spec),
`lengths` (`128;256;512`), `tokens_per_batch`, `add_bos`, `chat_template_mode`,
`do_sample`, `temperature`, `top_k`, `top_p`, `max_gen_toks`, `seed`, `dtype`,
`expand_model.pretrained_model_name_or_path` and `expand_model.tokenizer_name` (input-id
expansion of byte-level models); see `tokenkit.evaluation.lm.TokenkitLM`.
"""

from __future__ import annotations

from lm_eval.__main__ import cli_evaluate

import tokenkit.evaluation.lm  # noqa: F401  (registers the "tokenkit" backend)


def main() -> None:
    cli_evaluate()


if __name__ == "__main__":
    main()
