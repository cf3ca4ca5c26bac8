"""The committed tokenizer-pair data is what the tools make now (run as entrypoints)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import sparse

from tokenkit import tokenizer_info
from tokenkit.entry import REPO_ROOT

PAIRS = {
    "llama3_bpe__gemma2_sp": ("data/tokenizers/llama3_bpe:source=Llama3", "data/tokenizers/gemma2_sp:source=Gemma2"),
    "llama3_bpe__qwen2_bpe": ("data/tokenizers/llama3_bpe:source=Llama3", "data/tokenizers/qwen2_bpe:source=Qwen2"),
}


def run_tool(tool: str, teacher: str, student: str, out) -> str:
    name = tool.removeprefix("tools/").removesuffix(".py")
    command = [
        sys.executable,
        tool,
        f"--gin_param={name}.teacher='{teacher}'",
        f"--gin_param={name}.student='{student}'",
        f"--gin_param={name}.output_dir='{out}'",
        f"--workdir={out}/run",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_committed_pair_data_is_reproduced(pair, tmp_path):
    teacher, student = PAIRS[pair]
    summary = run_tool("tools/compute_tokenizer_info.py", teacher, student, tmp_path)
    assert "pairs, nonzero biases" in summary
    summary = run_tool("tools/compute_mined_mapping.py", teacher, student, tmp_path)
    assert "student ids mapped" in summary
    assert (tmp_path / "run" / "operative_config.gin").is_file()

    committed = REPO_ROOT / "data" / "tokenizer_pairs" / pair
    for name in tokenizer_info.COUNTS_FILES.values():
        assert json.loads((tmp_path / name).read_text()) == json.loads((committed / name).read_text()), name
    for name in tokenizer_info.BIAS_FILES:
        made, kept = sparse.load_npz(tmp_path / name).tocsr(), sparse.load_npz(committed / name).tocsr()
        assert made.shape == kept.shape and (made != kept).nnz == 0, name
    np.testing.assert_array_equal(
        np.load(tmp_path / tokenizer_info.MINED_MAPPING_FILE), np.load(committed / tokenizer_info.MINED_MAPPING_FILE)
    )
    assert json.loads((tmp_path / tokenizer_info.MINED_DISTANCES_FILE).read_text()) == json.loads(
        (committed / tokenizer_info.MINED_DISTANCES_FILE).read_text()
    )


def test_tools_refuse_missing_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/compute_mined_mapping.py", f"--workdir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0 and "teacher" in result.stderr
