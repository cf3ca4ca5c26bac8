"""Names of Hugging Face hub repositories, as tokenkit accepts them wherever a model or a
tokenizer is named.

A hub name is `name` or `org/name`, optionally with a revision (a branch, tag, commit or
`refs/pr/N`) after `@`: `TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T@refs/pr/8`.
The same string works in every place that takes a model (`build_run.student_model`,
`zett.model`, `score.model`, `eval.model`, ensemble members, expand models) and in
tokenizer specs (`org/name@v2:source=Llama3`). Anything that can only be a local path is
never sent to the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def split_revision(name: str) -> tuple[str, str | None]:
    """`("org/name", "rev")` for `"org/name@rev"`; `(name, None)` without a revision.

    Raises:
      ValueError: an `@` with an empty name or revision.
    """
    if "@" not in name or looks_like_local_path(name.split("@", 1)[0]) and Path(name).expanduser().exists():
        return name, None
    repo, _, revision = name.partition("@")
    if not repo or not revision:
        raise ValueError(f"Hub name {name!r}: expected 'org/name@revision' with both parts.")
    return repo, revision


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only be meant as a local path (so it must not go to the hub).

    Hub ids are `name` or `org/name`. Anything starting like a path, with more than one
    `/`, with characters a hub id cannot have, or whose first component is an existing
    local directory (`data/missing` next to a `data/` folder) is a path.
    """
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    if name.count("/") > 1 or not _HUB_ID.fullmatch(name):
        return True
    head, slash, _ = name.partition("/")
    return bool(slash) and Path(head).is_dir()
