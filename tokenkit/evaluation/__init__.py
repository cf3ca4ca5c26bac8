"""Evaluation: lm-eval backend, fast generation, token-level ensembles, scoring.

Modules (import what you need; importing `lm` registers lm-eval's `--model tokenkit`):

- `model`: `EvalModel`, one model as evaluation sees it (params, tokenizer, bos,
  vocabulary padding, input-id expansion); `load_eval_model`.
- `scoring`: log-likelihoods of token sequences and texts, bucketed and jitted.
- `generate`: KV-cache generation with a compiled decode loop (`Generator`).
- `ensemble`: unified vocabularies and combination strategies of lockstep ensembles.
- `lm`: `TokenkitLM`, the lm-eval `LM` (registered as `tokenkit`).
- `harness`: `evaluate` / `evaluate_lockstep`, the Gin-configurable functions behind
  `python -m tokenkit.eval` and `python -m tokenkit.eval_lockstep`.
"""
