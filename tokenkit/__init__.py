"""tokenkit: move language models and their knowledge across tokenizers."""

__version__ = "0.1.0"
