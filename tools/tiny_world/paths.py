"""Where the tiny world lives in the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "data"
CORPUS_DIR = DATA_DIR / "corpus"
TOKENIZERS_DIR = DATA_DIR / "tokenizers"
