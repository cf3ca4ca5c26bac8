"""`python -m tokenkit.zett`: FVT transfer of a tiny random Llama to other tokenizers,
written in the HF format, loadable by transformers and by us."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest

from tokenkit import byteify, entry
from tokenkit import zett as zett_lib
from tokenkit.models import load_pretrained

REPO = Path(__file__).resolve().parent.parent
import torch  # noqa: E402  (a test dependency: parity with the PyTorch models)
import transformers  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _tiny_llama(path: Path, vocab_size: int, tie: bool) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _tiny_llama(tmp_path_factory.mktemp("llama"), 4096, tie=False)


@pytest.fixture(scope="module")
def specs(tiny_tokenizer_specs):
    return tiny_tokenizer_specs


@pytest.fixture(scope="module")
def to_gemma(llama_dir, specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("zett_gemma")
    summary = zett_lib.zett(
        out, model=str(llama_dir), tokenizer=specs["llama3_bpe"], target_tokenizer=specs["gemma2_sp"]
    )
    return out, summary


def test_transfer_to_gemma2_loads_with_transformers_and_ours(to_gemma, llama_dir, specs):
    out, summary = to_gemma
    assert summary["vocab_size"] == 4032  # 4000 tokens padded to a multiple of 64
    assert summary["stats"] == dict(special=5, exact=1949, averaged=2046, fallback=0, total=4000)
    assert json.loads((out / zett_lib.STATS_FILE).read_text())["stats"] == summary["stats"]

    config, params = load_pretrained(out)
    assert config.vocab_size == 4032 and not config.tie_word_embeddings
    _, source = load_pretrained(llama_dir)
    gemma = byteify.load_byteify_tokenizer(specs["gemma2_sp"])
    llama = byteify.load_byteify_tokenizer(specs["llama3_bpe"])
    # eos lists every token that ends a reply: Gemma's <eos> and its end of turn.
    end_of_turn = gemma.convert_tokens_to_ids("<end_of_turn>")
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        gemma.bos_token_id, tuple(sorted({gemma.eos_token_id, end_of_turn})), gemma.pad_token_id,
    )
    emb, src_emb = np.asarray(params["embedder"]["embedding"]), np.asarray(source["embedder"]["embedding"])
    head, src_head = np.asarray(params["lm_head"]["kernel"]), np.asarray(source["lm_head"]["kernel"])
    bos, llama_bos = gemma.bos_token_id, llama.bos_token_id
    np.testing.assert_array_equal(emb[bos], src_emb[llama_bos])
    np.testing.assert_array_equal(head[:, bos], src_head[:, llama_bos])  # untied: same mapping
    the = (gemma.convert_tokens_to_ids("Ġthe"), llama.convert_tokens_to_ids("Ġthe"))
    np.testing.assert_array_equal(emb[the[0]], src_emb[the[1]])
    assert not emb[4000:].any() and not head[:, 4000:].any()  # padding rows

    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.config.vocab_size == 4032
    np.testing.assert_allclose(
        hf.get_input_embeddings().weight.detach().numpy(), emb, rtol=0, atol=0
    )
    ids = gemma.encode("The river runs.")
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 4032) and torch.isfinite(logits).all()


def test_saved_tokenizer_loads_with_the_written_spec(to_gemma, specs):
    out, summary = to_gemma
    spec = (out / zett_lib.SPEC_FILE).read_text().strip()
    assert spec == summary["tokenizer_spec"] == f"{out.resolve()}:source=Gemma2"
    saved = byteify.load_byteify_tokenizer(spec)
    original = byteify.load_byteify_tokenizer(specs["gemma2_sp"])
    assert len(saved) == len(original) and saved.get_vocab() == original.get_vocab()
    text = "Die Straße 12 + 7 = 19 🙂"
    assert saved.encode(text) == original.encode(text)


def test_stats_are_printed(llama_dir, specs, tmp_path, capsys):
    zett_lib.zett(
        None, model=str(llama_dir), tokenizer=specs["llama3_bpe"],
        target_tokenizer=specs["llama3_bpe"] + ":conversion=byte", output_dir=str(tmp_path / "b"),
        output_embeddings_mode="untie",
    )
    printed = capsys.readouterr().out
    assert "special=5 exact=260 averaged=0 fallback=0 (of 265)" in printed
    spec = f"{(tmp_path / 'b').resolve()}:source=Llama3:conversion=prebyteified"
    assert spec in printed
    saved = byteify.load_byteify_tokenizer(spec)
    original = byteify.load_byteify_tokenizer(specs["llama3_bpe"] + ":conversion=byte")
    assert saved.get_vocab() == original.get_vocab()
    assert saved.encode("a\nb ü") == original.encode("a\nb ü")
    config, _ = load_pretrained(tmp_path / "b")
    assert config.vocab_size == 320


def test_tied_model_stays_tied(specs, tmp_path):
    model = _tiny_llama(tmp_path / "tied", 4096, tie=True)
    zett_lib.zett(
        tmp_path / "out", model=str(model), tokenizer=specs["llama3_bpe"],
        target_tokenizer=specs["qwen2_bpe"], pad_to_multiple_of=128,
    )
    config, params = load_pretrained(tmp_path / "out")
    assert config.tie_word_embeddings and "lm_head" not in params and config.vocab_size == 3072
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert hf.config.tie_word_embeddings


def test_bad_input(llama_dir, specs, tmp_path):
    small = _tiny_llama(tmp_path / "small", 1000, tie=True)
    with pytest.raises(ValueError, match="has 4096 tokens but the model .* only 1000 embedding rows"):
        zett_lib.zett(tmp_path / "o1", model=str(small), tokenizer=specs["llama3_bpe"],
                      target_tokenizer=specs["gemma2_sp"])
    assert not (tmp_path / "o1").exists()
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zett_lib.zett(tmp_path / "o2", model=str(missing), tokenizer=specs["llama3_bpe"],
                      target_tokenizer=specs["gemma2_sp"])
    with pytest.raises(ValueError, match="--workdir or set zett.output_dir"):
        zett_lib.zett(None, model=str(llama_dir), tokenizer=specs["llama3_bpe"],
                      target_tokenizer=specs["gemma2_sp"])
    with pytest.raises(ValueError, match="valid: preserve, untie"):
        zett_lib.zett(tmp_path / "o3", model=str(llama_dir), tokenizer=specs["llama3_bpe"],
                      target_tokenizer=specs["gemma2_sp"], output_embeddings_mode="tied")


def test_saved_spec_rewrites_byte_conversion():
    assert zett_lib.saved_tokenizer_spec("x:source=Llama3:conversion=byte", "/o") == (
        "/o:source=Llama3:conversion=prebyteified"
    )
    assert zett_lib.saved_tokenizer_spec("x:source=Llama3:conversion=pure_byte", "/o") == (
        "/o:source=Llama3:conversion=prebyteified"
    )
    assert zett_lib.saved_tokenizer_spec("x:source=Gemma2:target=Qwen2", "/o") == (
        "/o:source=Gemma2:target=Qwen2"
    )


@pytest.mark.parametrize("path", sorted((REPO / "gin" / "zett").glob("*.gin")), ids=lambda p: p.name)
def test_example_gin_files_bind_only_zett_parameters(path):
    entry.parse_gin([str(path)], finalize=False)
    for name in ("model", "tokenizer", "target_tokenizer"):
        assert isinstance(gin.query_parameter(f"zett.{name}"), str)


@pytest.mark.slow
def test_entrypoint_end_to_end(llama_dir, specs, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "tokenkit.zett",
            "--gin_file=gin/zett/tiny_llama3_to_gemma2.gin",
            f"--gin_param=zett.model='{llama_dir}'",
            f"--gin_param=zett.tokenizer='{specs['llama3_bpe']}'",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "special=5 exact=1949 averaged=2046 fallback=0 (of 4000)" in result.stdout
    assert (tmp_path / "operative_config.gin").exists()
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == 4032
