"""The real assets: pinned downloads, the converted SmolLM2 and the five real tokenizers.

Figures are exact: a transformers or tokenizers release that changes a conversion shows
up here first (then update `tools/real_assets.py`'s pins and docs/real_assets.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenkit import byteify
from tokenkit.models import load_pretrained
from tools import real_assets as tool

pytestmark = pytest.mark.real

# name -> (tokens, vectors equal, indices of the vectors that differ), of 46 vectors each.
KNOWN = {
    "llama3": (128_256, 45, [43]),
    "qwen2": (151_936, 46, []),
    "phi3": (32_064, 46, []),
    "gpt2": (50_257, 46, []),
    "llama2": (32_000, 31, [3, 4, 5, 12, 14, 15, 17, 18, 24, 25, 26, 27, 28, 29, 44]),
}
SAMPLE = " Hello world, Grüße aus Köln! 2024: naïve café\n\tdef f(x): return x**2"


def test_downloads_match_the_pins(real_assets):
    for pin in tool.PINS:
        path = real_assets.downloads_dir / pin.filename
        assert path.stat().st_size == pin.size
        assert tool.sha256_file(path) == pin.sha256
        recorded = real_assets.manifest["downloads"][pin.filename]
        assert (recorded["project"], recorded["version"], recorded["sha256"]) == (pin.project, pin.version, pin.sha256)


def test_manifest_describes_the_files_on_disk(real_assets):
    manifest = tool.check_manifest(real_assets.root)
    assert manifest is not None and manifest == json.loads((real_assets.root / tool.MANIFEST).read_text())
    assert set(manifest["tokenizers"]) == set(KNOWN)
    assert {"transformers", "tokenizers", "gguf", "torch"} <= set(manifest["versions"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", tool.SMOLLM2_GGUF):
        assert f"models/{tool.SMOLLM2_NAME}/{name}" in manifest["files"]
    # A second call trusts the manifest: no network (the index is unreachable) and no work.
    again = tool.ensure(real_assets.root.parent, index="http://127.0.0.1:9/unreachable")
    assert again == real_assets


@pytest.mark.parametrize("name", list(KNOWN))
def test_test_vector_agreement(real_assets, name):
    from transformers import AutoTokenizer

    size, equal, differ = KNOWN[name]
    directory = real_assets.tokenizer_dir(name)
    gguf_name = tool.TOKENIZERS[name].gguf_name
    vectors = tool.read_test_vectors(directory / f"{gguf_name}.inp", directory / f"{gguf_name}.out")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    agreement = tool.vector_agreement(tokenizer, vectors)
    assert (len(tokenizer), agreement["equal"], agreement["total"], agreement["differ"]) == (size, equal, 46, differ)
    recorded = real_assets.manifest["tokenizers"][name]
    assert recorded["vectors"]["differ"] == differ and recorded["vocab_size"] == size
    assert real_assets.tokenizer_gguf(name).is_file()


@pytest.mark.parametrize("name", list(KNOWN))
def test_byteify_loads_each_real_tokenizer(real_assets, name):
    from transformers import AutoTokenizer

    spec = real_assets.tokenizer_spec(name)
    assert spec == f"{real_assets.tokenizer_dir(name)}:source={tool.TOKENIZERS[name].family}"
    tokenizer = byteify.load_byteify_tokenizer(spec)
    assert tokenizer.family.name == tool.TOKENIZERS[name].family
    assert len(tokenizer) == KNOWN[name][0]
    hf = AutoTokenizer.from_pretrained(str(real_assets.tokenizer_dir(name)))
    assert tokenizer.encode(SAMPLE, add_special_tokens=False) == hf.encode(SAMPLE, add_special_tokens=False)


def test_smollm2_from_gguf_equals_the_converted_directory(real_assets):
    import jax

    config, params = load_pretrained(real_assets.smollm2_gguf)
    ref_config, ref_params = load_pretrained(real_assets.smollm2_dir)
    assert config == ref_config
    assert (config.architecture, config.vocab_size, config.num_layers, config.hidden_size) == ("llama", 49_152, 30, 576)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    ref = dict(jax.tree_util.tree_leaves_with_path(ref_params))
    assert len(leaves) == len(ref)
    for path, value in leaves:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ref[path]), err_msg=str(path))


def test_smollm2_tokenizer_from_gguf_path(real_assets):
    from_gguf = byteify.load_hf_tokenizer(str(real_assets.smollm2_gguf))
    from_dir = byteify.load_hf_tokenizer(str(real_assets.smollm2_dir))
    assert len(from_gguf) == len(from_dir) == 49_152
    assert from_gguf.get_vocab() == from_dir.get_vocab()
    assert from_gguf.chat_template == from_dir.chat_template and "<|im_start|>" in from_gguf.chat_template
    messages = [{"role": "user", "content": tool.FRANCE_QUESTION}]
    ids = from_gguf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == from_dir.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert from_dir.decode(ids).endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_tokenkit_model_matches_transformers_on_smollm2(real_assets):
    import jax
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenkit.models import Transformer

    tokenizer = AutoTokenizer.from_pretrained(str(real_assets.smollm2_dir))
    ids = tokenizer(tool.LOGITS_TEXT, return_tensors="np")["input_ids"]
    config, params = load_pretrained(real_assets.smollm2_dir)
    ours = jax.jit(lambda p, i: Transformer(config).apply({"params": p}, i).logits)(params, ids)
    hf = AutoModelForCausalLM.from_pretrained(str(real_assets.smollm2_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-3, rtol=0)
    assert (np.asarray(ours).argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.slow
def test_converted_smollm2_answers_the_france_question(real_assets):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(real_assets.smollm2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(real_assets.smollm2_dir), dtype=torch.float32).eval()
    assert tool.greedy_chat_answer(model, tokenizer, tool.FRANCE_QUESTION) == "The capital of France is Paris."
    assert real_assets.manifest["smollm2"]["logits_max_abs_diff"] <= 1e-4
