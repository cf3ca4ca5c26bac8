"""Shared fixtures for the tiny-world tests: the committed data and loaded tokenizers."""

import sys
from pathlib import Path

import pytest

# `tools` is not an installed package; make `import tools.tiny_world` work under plain
# `pytest` too, not only under `python -m pytest` from the repository root.
_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tools.tiny_world.paths import CORPUS_DIR, TOKENIZERS_DIR  # noqa: E402
from tools.tiny_world.corpus import read_jsonl  # noqa: E402
from tools.tiny_world.tokenizer_specs import SPECS  # noqa: E402


@pytest.fixture(scope="session")
def validation_records() -> list[dict]:
    return read_jsonl(CORPUS_DIR / "validation.jsonl")


@pytest.fixture(scope="session")
def validation_texts(validation_records) -> list[str]:
    """Every prose text and every chat message of the validation split."""
    texts = []
    for record in validation_records:
        if "messages" in record:
            texts += [m["content"] for m in record["messages"]]
        else:
            texts.append(record["text"])
    return texts


@pytest.fixture(scope="session", params=tuple(SPECS))
def tokenizer_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_name):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / tokenizer_name))
