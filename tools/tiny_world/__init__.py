"""The tiny world: a small, deterministic corpus and three tokenizers built from it.

Everything under `data/corpus/` and `data/tokenizers/` is produced by
`python -m tools.tiny_world.build` from the hand-written prose in `prose/` and the seeded
chat-task generator in `chat_tasks.py`, so that every part of tokenkit can run for real on
a laptop CPU with no network. See `data/README.md`.
"""
