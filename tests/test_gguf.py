"""GGUF files as model and tokenizer inputs (`tokenkit.gguf` and the two loading hooks).

The fixture writes the tiny-world teacher into a GGUF file the way llama.cpp's converter
lays a Llama out (its tensor names, its q/k row permutation, the tokenizer as token /
merge arrays), so these tests need neither the network nor the real assets
(`tests/real/` covers the SmolLM2 file).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf_py = pytest.importorskip("gguf")  # the `gguf` package transformers reads GGUF with

from tokenkit import byteify, gguf  # noqa: E402
from tokenkit.models import hf_io, load_pretrained, resolve_checkpoint_dir  # noqa: E402

from tests.conftest import DATA_DIR  # noqa: E402

TEACHER = DATA_DIR / "models" / "tiny_teacher"
TEXTS = [
    "The cat sat on the mat.",
    "Hello world! 12345 apples, 6.5 kg.",
    "  two spaces\nand a newline",
    "Grüße aus Köln",
]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k projections (interleaved rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model_dir: Path, out: Path, quantize: bool = False) -> Path:
    """Writes a Llama HF checkpoint + tokenizer as one GGUF file (float32, or Q8_0 matrices)."""
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "model.safetensors")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    writer = gguf_py.GGUFWriter(str(out), "llama")
    writer.add_name("tiny teacher")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab] + [added[i] for i in sorted(added)]
    assert len(tokens) == config["vocab_size"]
    types = [gguf_py.TokenType.CONTROL if i in added else gguf_py.TokenType.NORMAL for i in range(len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(config["num_hidden_layers"]):
        for hf, ours in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{ours}.weight"
    for hf_name, name in names.items():
        value = tensors[hf_name].astype(np.float32)
        if ".attn_q." in name:
            value = _permute(value, n_head)
        elif ".attn_k." in name:
            value = _permute(value, n_kv)
        if quantize and value.ndim == 2:
            qtype = gguf_py.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf_py.quants.quantize(value, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def teacher_gguf(tmp_path_factory) -> Path:
    return write_llama_gguf(TEACHER, tmp_path_factory.mktemp("gguf") / "tiny-teacher.F32.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path))
    assert gguf.cache_root() == tmp_path
    monkeypatch.delenv(gguf.CACHE_ENV)
    assert gguf.cache_root() == Path.home() / ".cache" / "tokenkit"


def test_read_header(teacher_gguf, tmp_path):
    header = gguf.read_header(teacher_gguf)
    assert header.version == 3
    assert header.tensor_count == 2 + 9 * 4  # embeddings, final norm, 9 per layer
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(30))
    with pytest.raises(ValueError, match="is not a GGUF file"):
        gguf.read_header(bad)
    assert gguf.is_gguf_path(teacher_gguf)
    assert not gguf.is_gguf_path(tmp_path / "missing.gguf")
    assert not gguf.is_gguf_path(TEACHER / "config.json")


def test_model_from_gguf_equals_the_directory(teacher_gguf, cache):
    config, params = load_pretrained(teacher_gguf)
    ref_config, ref_params = load_pretrained(TEACHER)
    # GGUF stores the epsilon as float32 and takes bos/eos from its tokenizer metadata.
    assert config.rms_norm_eps == pytest.approx(ref_config.rms_norm_eps, rel=1e-6)
    assert (config.bos_token_id, config.eos_token_id) == (4091, 4095)
    same = dict(rms_norm_eps=ref_config.rms_norm_eps, bos_token_id=ref_config.bos_token_id,
                eos_token_id=ref_config.eos_token_id)
    assert dataclasses.replace(config, **same) == ref_config
    import jax

    flat = jax.tree_util.tree_leaves_with_path(params)
    ref = dict(jax.tree_util.tree_leaves_with_path(ref_params))
    assert len(flat) == len(ref)
    for path, value in flat:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ref[path]), err_msg=str(path))
    converted = json.loads((resolve_checkpoint_dir(teacher_gguf) / "config.json").read_text())
    assert "quantization_config" not in converted
    assert converted["architectures"] == ["LlamaForCausalLM"]


def test_quantized_gguf_loads_dequantized(tmp_path, cache):
    path = write_llama_gguf(TEACHER, tmp_path / "tiny-teacher.Q8_0.gguf", quantize=True)
    _, params = load_pretrained(path)
    _, ref = load_pretrained(TEACHER)
    kernel = np.asarray(params["layers"]["mlp"]["up"]["kernel"])
    expected = np.asarray(ref["layers"]["mlp"]["up"]["kernel"])
    # Q8_0 keeps 8 bits per weight with one scale per 32: close, but not equal.
    assert not np.array_equal(kernel, expected)
    np.testing.assert_allclose(kernel, expected, atol=0.02 * np.abs(expected).max())


def test_conversions_are_cached_by_file_identity(teacher_gguf, cache, monkeypatch):
    first = gguf.model_dir(teacher_gguf)
    assert first.parent.parent == cache / "gguf"
    assert first.parent.name.startswith("tiny-teacher.F32-")
    record = json.loads((first / "conversion.json").read_text())
    assert record["source"] == str(teacher_gguf.resolve())

    def fail(*args, **kwargs):
        raise AssertionError("a cached conversion must not convert again")

    monkeypatch.setattr(gguf, "convert_model", fail)
    monkeypatch.setattr(gguf, "load_torch_model", fail)
    assert gguf.model_dir(teacher_gguf) == first
    assert resolve_checkpoint_dir(str(teacher_gguf)) == first
    # A touched file is another file: its key changes.
    stat = teacher_gguf.stat()
    os.utime(teacher_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert gguf.cache_key(teacher_gguf) != first.parent.name


def test_incomplete_conversion_is_redone(teacher_gguf, cache):
    final = gguf.tokenizer_dir(teacher_gguf)
    (final / "conversion.json").unlink()  # no longer a finished conversion
    (final / "tokenizer.json").write_text("{}")
    again = gguf.tokenizer_dir(teacher_gguf)
    assert again == final and (again / "conversion.json").is_file()
    assert len(json.loads((again / "tokenizer.json").read_text())["model"]["vocab"]) == 4096


def test_tokenizer_from_gguf_path(teacher_gguf, cache):
    from transformers import AutoTokenizer

    ours = byteify.load_hf_tokenizer(str(teacher_gguf))
    ref = AutoTokenizer.from_pretrained(str(TEACHER))
    # The converter's own `<|endoftext|>` (id 4096, past the embeddings) is dropped.
    assert len(ours) == len(ref) == 4096
    assert "<|endoftext|>" not in ours.get_vocab() and ours.unk_token is None
    assert ours.get_vocab() == ref.get_vocab()
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), text
    assert ours.chat_template == ref.chat_template
    assert ours.bos_token == "<|begin_of_text|>"
    spec = byteify.load_byteify_tokenizer(f"{teacher_gguf}:source=Llama3")
    assert spec.family.name == "Llama3"
    assert spec.encode("The cat", add_special_tokens=False) == ref.encode("The cat", add_special_tokens=False)


def test_files_beside_the_gguf_are_ignored(teacher_gguf, tmp_path):
    import shutil

    # transformers would read a tokenizer.json / config.json found next to the file.
    beside = tmp_path / "beside"
    beside.mkdir()
    shutil.copy(teacher_gguf, beside / teacher_gguf.name)
    for f in (DATA_DIR / "models" / "tiny_teacher_qwen2").iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, beside / f.name)
    tokenizer = gguf.load_tokenizer(beside / teacher_gguf.name)
    assert "<|begin_of_text|>" in tokenizer.get_vocab() and "<|im_start|>" not in tokenizer.get_vocab()
    assert "<|start_header_id|>" in tokenizer.chat_template


def test_vocabulary_only_gguf_is_not_a_model(tmp_path, cache):
    path = tmp_path / "vocab-only.gguf"
    writer = gguf_py.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="holds no tensors"):
        load_pretrained(path)
    assert not (cache / "gguf" / gguf.cache_key(path) / "model").exists()


def test_missing_readers_are_named(teacher_gguf, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ImportError, match="Reading GGUF files needs torch"):
        gguf.load_tokenizer(teacher_gguf)


def test_other_files_are_still_refused(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=r"expected a directory or a \.gguf file"):
        hf_io.resolve_checkpoint_dir(other)
