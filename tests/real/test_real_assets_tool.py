"""tools/real_assets.py without the network: a package index served from a local
directory (file: URLs) or a local HTTP server, checksums, errors, test-vector files,
the manifest check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from tools import real_assets as tool

PAYLOAD = b"not really a wheel, but pinned all the same\n" * 100


def _pin(data: bytes = PAYLOAD, name: str = "demo_pkg-1.0-py3-none-any.whl") -> tool.Pin:
    return tool.Pin("Demo.Pkg", "1.0", name, hashlib.sha256(data).hexdigest(), len(data))


def _index(tmp_path: Path, pin: tool.Pin, data: bytes = PAYLOAD, *, kind: str = "html",
           stated_sha: str | None = "pin") -> str:
    """A PEP 503 (html) or PEP 691 (json) index in `tmp_path/simple`, files in `tmp_path/files`."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / pin.filename).write_bytes(data)
    page = tmp_path / "simple" / "demo-pkg"  # the normalised project name
    page.mkdir(parents=True, exist_ok=True)
    sha = pin.sha256 if stated_sha == "pin" else stated_sha
    href = f"../../files/{pin.filename}"  # relative, as PEP 503 allows
    other = "demo_pkg-0.9-py3-none-any.whl"
    if kind == "html":
        fragment = f"#sha256={sha}" if sha else ""
        (page / "index.html").write_text(
            f'<html><body><a href="../../files/{other}#sha256={"0" * 64}">{other}</a><br/>'
            f'<a href="{href}{fragment}" data-requires-python="&gt;=3.9">{pin.filename}</a></body></html>'
        )
    else:
        entries = [{"filename": other, "url": f"../../files/{other}", "hashes": {}},
                   {"filename": pin.filename, "url": href, "hashes": {"sha256": sha} if sha else {}}]
        (page / "index.json").write_text(json.dumps({"meta": {"api-version": "1.1"}, "files": entries}))
    return (tmp_path / "simple").as_uri()


@pytest.mark.parametrize("kind", ["html", "json"])
def test_download_from_a_local_index(tmp_path, kind):
    pin = _pin()
    index = _index(tmp_path, pin, kind=kind)
    path, url = tool.download(pin, tmp_path / "downloads", index)
    assert path.read_bytes() == PAYLOAD
    assert url == (tmp_path / "files" / pin.filename).as_uri()
    # Present and verified: no index access at all the second time.
    again, url = tool.download(pin, tmp_path / "downloads", "http://127.0.0.1:9/unreachable")
    assert again == path and url == ""


def test_download_over_http(tmp_path):
    pin = _pin()
    _index(tmp_path, pin, kind="html")  # the server answers a directory with its index.html
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        entry = tool.find_file(pin, tool.index_url(index))
        assert entry.url == f"http://127.0.0.1:{server.server_address[1]}/files/{pin.filename}"
        path, _ = tool.download(pin, tmp_path / "downloads", tool.index_url(index))
        assert path.read_bytes() == PAYLOAD
    finally:
        server.shutdown()
        server.server_close()


def test_index_stating_another_checksum_is_refused(tmp_path):
    pin = _pin()
    index = _index(tmp_path, pin, stated_sha="ab" * 32)
    with pytest.raises(tool.ChecksumError, match=f"states sha256 {'ab' * 32}.*pinned is {pin.sha256}"):
        tool.download(pin, tmp_path / "downloads", index)
    assert not (tmp_path / "downloads" / pin.filename).exists()


def test_downloaded_bytes_must_match_the_pin(tmp_path):
    pin = _pin()
    index = _index(tmp_path, pin, data=b"tampered", stated_sha=None)  # the index states no hash
    with pytest.raises(tool.ChecksumError, match=f"pinned is {pin.sha256}"):
        tool.download(pin, tmp_path / "downloads", index)
    assert list((tmp_path / "downloads").iterdir()) == []  # no partial file left


def test_unreachable_index_names_the_url():
    pin = _pin()
    with pytest.raises(tool.RegistryError, match=r"http://127\.0\.0\.1:9/simple/demo-pkg/.*--index_url"):
        tool.find_file(pin, "http://127.0.0.1:9/simple")


def test_file_missing_from_the_index(tmp_path):
    index = _index(tmp_path, _pin())
    wanted = _pin(name="demo_pkg-1.0.tar.gz")
    with pytest.raises(tool.RegistryError, match=r"does not list demo_pkg-1\.0\.tar\.gz.*demo_pkg-1\.0-py3-none-any\.whl"):
        tool.find_file(wanted, index)


def test_index_url_precedence(monkeypatch):
    monkeypatch.delenv("TOKENKIT_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert tool.index_url() == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/pypi/simple/")
    assert tool.index_url() == "https://mirror.example/pypi/simple"
    monkeypatch.setenv("TOKENKIT_INDEX_URL", "file:///srv/simple")
    assert tool.index_url() == "file:///srv/simple"
    assert tool.index_url("https://other/simple") == "https://other/simple"
    assert tool.normalized_project("llama_cpp.Python") == "llama-cpp-python"


def test_read_test_vectors(tmp_path):
    inp, out = tmp_path / "v.gguf.inp", tmp_path / "v.gguf.out"
    inp.write_bytes("a b\n__ggml_vocab_test__\n\n__ggml_vocab_test__\nx\r\ny\n__ggml_vocab_test__\n".encode())
    out.write_bytes(b" 1 2\n\n 7 8 9\n")
    assert tool.read_test_vectors(inp, out) == [("a b", [1, 2]), ("", []), ("x\r\ny", [7, 8, 9])]
    out.write_bytes(b" 1 2\n\n")
    with pytest.raises(ValueError, match="has 3 texts but .* 2 lines"):
        tool.read_test_vectors(inp, out)


def test_vector_agreement_lists_what_differs():
    class Spaces:
        def encode(self, text, add_special_tokens):
            assert add_special_tokens is False
            return [len(w) for w in text.split()]

    result = tool.vector_agreement(Spaces(), [("ab c", [2, 1]), ("abc", [1, 2]), ("", [])])
    assert (result["equal"], result["total"], result["differ"]) == (2, 3, [1])
    assert result["differences"] == [{"index": 1, "text": "abc", "expected": [1, 2], "got": [3]}]


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / tool.SUBDIR
    (root / "models").mkdir(parents=True)
    (root / "models" / "weights.bin").write_bytes(b"1234")
    manifest = {
        "manifest_version": tool.MANIFEST_VERSION,
        "downloads": {p.filename: {"sha256": p.sha256} for p in tool.PINS},
        "tokenizers": {name: {} for name in tool.TOKENIZERS},
        "files": tool._made_files(root),
    }
    (root / tool.MANIFEST).write_text(json.dumps(manifest))
    return root


def test_manifest_check(tmp_path):
    root = _fake_root(tmp_path)
    assert tool.check_manifest(root)["files"] == {"models/weights.bin": 4}
    assets = tool.ensure(tmp_path, index="http://127.0.0.1:9/unreachable")  # trusts it: no network
    assert assets.root == root
    (root / "models" / "weights.bin").write_bytes(b"12345")
    assert tool.check_manifest(root) is None
    (root / "models" / "weights.bin").unlink()
    assert tool.check_manifest(root) is None
    with pytest.raises(tool.RegistryError, match="127.0.0.1:9/unreachable"):
        tool.ensure(tmp_path, index="http://127.0.0.1:9/unreachable")


def test_manifest_of_other_pins_is_not_trusted(tmp_path):
    root = _fake_root(tmp_path)
    manifest = json.loads((root / tool.MANIFEST).read_text())
    manifest["downloads"][tool.PINS[0].filename]["sha256"] = "0" * 64
    (root / tool.MANIFEST).write_text(json.dumps(manifest))
    assert tool.check_manifest(root) is None


def test_paths_and_specs():
    assets = tool.RealAssets(Path("/cache/real_assets"))
    assert assets.smollm2_gguf == Path("/cache/real_assets/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert assets.smollm2_tokenizer_spec == "/cache/real_assets/models/smollm2-135m-instruct:source=auto"
    specs = {name: assets.tokenizer_spec(name) for name in tool.TOKENIZERS}
    assert specs == {
        "llama3": "/cache/real_assets/tokenizers/llama3:source=Llama3",
        "qwen2": "/cache/real_assets/tokenizers/qwen2:source=Qwen2",
        "phi3": "/cache/real_assets/tokenizers/phi3:source=Phi3",
        "gpt2": "/cache/real_assets/tokenizers/gpt2:source=GPT2",
        "llama2": "/cache/real_assets/tokenizers/llama2:source=TinyLlama",
    }
    assert assets.tokenizer_gguf("llama3").name == "ggml-vocab-llama-bpe.gguf"
    with pytest.raises(KeyError, match="Unknown real tokenizer 'llama4'; known: llama3, qwen2"):
        assets.tokenizer_dir("llama4")
