"""Hub names with a revision (`org/name@rev`) wherever a model or tokenizer is named."""

import pytest

from tokenkit import byteify, hub
from tokenkit.models import hf_io


def test_split_revision():
    assert hub.split_revision("TinyLlama/TinyLlama-1.1B@refs/pr/8") == ("TinyLlama/TinyLlama-1.1B", "refs/pr/8")
    assert hub.split_revision("gpt2@v1") == ("gpt2", "v1")
    assert hub.split_revision("org/name") == ("org/name", None)
    assert hub.split_revision("data/models/tiny_teacher") == ("data/models/tiny_teacher", None)
    with pytest.raises(ValueError, match="both parts"):
        hub.split_revision("org/name@")


def test_existing_local_paths_with_at_signs_stay_paths(tmp_path):
    local = tmp_path / "run@3"
    local.mkdir()
    assert hub.split_revision(str(local)) == (str(local), None)


def test_models_download_the_named_revision(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, tuple(allow_patterns)))
        return str(tmp_path)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert hf_io.resolve_checkpoint_dir("org/model@refs/pr/8") == tmp_path
    assert calls[-1][:2] == ("org/model", "refs/pr/8") and "*.msgpack" in calls[-1][2]
    hf_io.resolve_checkpoint_dir("org/model", revision="main")
    assert calls[-1][:2] == ("org/model", "main")
    with pytest.raises(ValueError, match="names revision 'a' but revision='b'"):
        hf_io.resolve_checkpoint_dir("org/model@a", revision="b")


def test_tokenizers_load_the_named_revision(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(source, revision=None, **kwargs):
        seen.update(source=source, revision=revision)
        raise Stop()

    monkeypatch.setattr(byteify.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    with pytest.raises(Stop):
        byteify.load_hf_tokenizer("org/tok@v2")
    assert seen == {"source": "org/tok", "revision": "v2"}
