"""Test-wide setup.

Eight simulated CPU devices let sharding tests build real meshes; this must happen before
JAX initialises its backend, hence at import time of the conftest.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"

import pytest  # noqa: E402  (after the environment setup above)

# The tiny world's tokenizers (see data/README.md) and the family each belongs to.
TINY_TOKENIZERS_DIR = DATA_DIR / "tokenizers"
TINY_TOKENIZER_FAMILIES = {"llama3_bpe": "Llama3", "qwen2_bpe": "Qwen2", "gemma2_sp": "Gemma2"}


@pytest.fixture(scope="session")
def tiny_tokenizer_specs() -> dict[str, str]:
    """Tokenizer specs of the tiny-world tokenizers by directory name, e.g.
    `{"llama3_bpe": "/.../data/tokenizers/llama3_bpe:source=Llama3", ...}`."""
    specs = {}
    for name, family in TINY_TOKENIZER_FAMILIES.items():
        path = TINY_TOKENIZERS_DIR / name
        if not (path / "tokenizer.json").is_file():
            pytest.fail(f"Tiny-world tokenizer {path} is missing (see data/README.md)")
        specs[name] = f"{path}:source={family}"
    return specs


@pytest.fixture(scope="session")
def tiny_swap_spec(tiny_tokenizer_specs, tmp_path_factory):
    """`swap(name, target)` -> spec of tiny tokenizer `name` with `:target=<target>`.

    A target family's template words (e.g. Gemma's `model`) may be missing from a tiny
    vocabulary; then the spec names a copy with those words added as (non-special)
    added tokens, so the swap loads as it would for the real, large vocabularies.
    """
    from transformers import AutoTokenizer

    from tokenkit import byteify, constants, families

    made: dict[tuple[str, str], str] = {}

    def swap(name: str, target: str) -> str:
        if (name, target) not in made:
            spec = tiny_tokenizer_specs[name]
            tokenizer = byteify.load_byteify_tokenizer(spec)
            words = families.get_family(target).template_tokens
            missing = [w for w in words if w not in tokenizer.get_vocab() and w not in
                       families.get_family(target).special_tokens]
            path = spec.split(":")[0]
            if missing:
                hf = AutoTokenizer.from_pretrained(path)
                hf.add_tokens([constants.chars_to_bytes(w).decode() for w in missing])
                path = str(tmp_path_factory.mktemp(f"{name}_for_{target}"))
                hf.save_pretrained(path)
            made[name, target] = f"{path}:{spec.split(':', 1)[1]}:target={target}"
        return made[name, target]

    return swap
