"""Session fixtures: tiny random models (see `support.py`) and a saved checkpoint."""

from __future__ import annotations

import pytest

from tests.evaluation.support import LLAMA_SPEC, QWEN_AS_LLAMA_SPEC, QWEN_SPEC, make_model
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import save_pretrained


@pytest.fixture(scope="session")
def llama_model() -> EvalModel:
    """A tiny Llama on the Llama3-family BPE (4096 ids, padded to 4160 rows)."""
    return make_model(LLAMA_SPEC, seed=1)


@pytest.fixture(scope="session")
def qwen_models() -> tuple[EvalModel, EvalModel]:
    """Two different tiny models reading Qwen2 BPE ids: one with the Qwen2 family (no
    bos), one transferred from Llama3 (Llama3 bos and chat template, untied, Qwen2-arch)."""
    native = make_model(QWEN_SPEC, seed=2, add_bos=False, architecture="qwen2", qkv_bias=True,
                        tie_word_embeddings=True)
    transferred = make_model(QWEN_AS_LLAMA_SPEC, seed=3)
    return native, transferred


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory, llama_model) -> str:
    """`llama_model` saved as an HF checkpoint directory."""
    path = tmp_path_factory.mktemp("tiny_llama")
    save_pretrained(path, llama_model.config, llama_model.params)
    return str(path)
