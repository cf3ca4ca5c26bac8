"""`TokenizerPair`: a run's teacher/student tokenizer-pair data and its thresholds.

A distillation run may read precomputed data about its two tokenizers (a directory made
by `tools/compute_tokenizer_info.py` and `tools/compute_mined_mapping.py`, read by
`tokenkit.tokenizer_info.load_pair_data`): bias matrices for the `unbiased` chunking and
the MinED mapping for `baseline_mined`. This Gin configurable is the one place that
names the directory and the thresholds that go with it:

    TokenizerPair.path = 'data/tokenizer_pairs/llama3_bpe__gemma2_sp'
    TokenizerPair.bias_threshold = 1e-3          # `unbiased` chunking only

The upstream has a single knob, `tokenizer_pair_bias_threshold`, used both as the
bias threshold of the `unbiased` chunking and as the space-probability threshold of
ALM's `merge_by_space_prob` mode. It is available under that name:

    TokenizerPair.tokenizer_pair_bias_threshold = 1e-4   # sets both

and setting it together with one of the two specific thresholds
(`TokenizerPair.bias_threshold`, `AlmOptions.space_merge_threshold`) is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gin

from tokenkit import tokenizer_info
from tokenkit.byteify import ByteifyTokenizer

DEFAULT_BIAS_THRESHOLD = 1e-3


def _is_bound(parameter: str) -> bool:
    """Whether a Gin binding for `parameter` (`Configurable.name`) exists."""
    try:
        gin.query_parameter(parameter)
    except ValueError:
        return False
    return True


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TokenizerPair:
    """Tokenizer-pair data of a run (see the module docstring).

    Attributes:
      path: a pair directory, or None (no `unbiased` chunking, no MinED).
      bias_threshold: bias below which a token pair ends an `unbiased` chunk (None: the
        single knob, else `DEFAULT_BIAS_THRESHOLD`).
      tokenizer_pair_bias_threshold: the upstream's single knob for both thresholds.
    """

    path: str | None = None
    bias_threshold: float | None = None
    tokenizer_pair_bias_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.tokenizer_pair_bias_threshold is None:
            return
        clashes = [name for name, bound in (
            ("TokenizerPair.bias_threshold", self.bias_threshold is not None),
            ("AlmOptions.space_merge_threshold", _is_bound("AlmOptions.space_merge_threshold")),
        ) if bound]
        if clashes:
            raise ValueError(
                "TokenizerPair.tokenizer_pair_bias_threshold (the upstream's single knob) sets "
                f"both thresholds; it cannot be combined with {', '.join(clashes)}. Set either "
                "the single knob or the specific thresholds."
            )

    @property
    def unbiased_threshold(self) -> float:
        """The threshold of the `unbiased` chunking."""
        if self.bias_threshold is not None:
            return self.bias_threshold
        if self.tokenizer_pair_bias_threshold is not None:
            return self.tokenizer_pair_bias_threshold
        return DEFAULT_BIAS_THRESHOLD

    @property
    def space_merge_threshold(self) -> float | None:
        """ALM's `merge_by_space_prob` threshold when the single knob sets it, else None
        (`AlmOptions.space_merge_threshold` applies)."""
        return self.tokenizer_pair_bias_threshold

    def load(
        self, teacher: ByteifyTokenizer, student: ByteifyTokenizer
    ) -> tokenizer_info.TokenizerPairData | None:
        """The pair directory's data, or None without a path."""
        if self.path is None:
            return None
        if not Path(self.path).is_dir():
            raise FileNotFoundError(
                f"TokenizerPair.path {self.path!r} is not a directory (make one with "
                "tools/compute_tokenizer_info.py)."
            )
        return tokenizer_info.load_pair_data(self.path, teacher, student)
