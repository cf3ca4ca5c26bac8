"""Writes a tokenizer as a Hugging Face tokenizer directory, byte for byte reproducibly.

The directory holds `tokenizer.json` (the whole pipeline), `tokenizer_config.json`
(special-token roles and the chat template) and, for SentencePiece, `tokenizer.model`.
`transformers.AutoTokenizer.from_pretrained(dir)` loads it as a fast tokenizer.

`tokenizer_class` is `PreTrainedTokenizerFast` for every family: in transformers 5 the
family classes (e.g. `Qwen2Tokenizer`) rebuild parts of the pipeline from their own
defaults instead of using `tokenizer.json` as written.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from tools.tiny_world.tokenizer_specs import TokenizerSpec


def tokenizer_config(spec: TokenizerSpec) -> dict:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": spec.bos_token,
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
    }
    if spec.unk_token is not None:
        config["unk_token"] = spec.unk_token
    # The family's other special tokens (turn and header markers), so transformers lists
    # them among its special tokens as it does for the real families.
    roles = {spec.bos_token, spec.eos_token, spec.pad_token, spec.unk_token}
    config["extra_special_tokens"] = [t for t in spec.special_tokens if t not in roles]
    # Decoding must give back the text exactly; the cleanup would drop spaces before
    # punctuation (Llama 3 ships with it on, which breaks lossless round trips).
    config["clean_up_tokenization_spaces"] = False
    config["chat_template"] = spec.chat_template
    return config


def write_tokenizer_dir(out_dir: str | Path, spec: TokenizerSpec, tokenizer: Tokenizer,
                        sentencepiece_model: bytes | None = None) -> list[Path]:
    """Writes the directory; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    path = out_dir / "tokenizer.json"
    path.write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8", newline="\n")
    files.append(path)
    path = out_dir / "tokenizer_config.json"
    text = json.dumps(tokenizer_config(spec), ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")
    files.append(path)
    if sentencepiece_model is not None:
        path = out_dir / "tokenizer.model"
        path.write_bytes(sentencepiece_model)
        files.append(path)
    return files
