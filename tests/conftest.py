"""Test-wide setup.

Eight simulated CPU devices let sharding tests build real meshes; this must happen before
JAX initialises its backend, hence at import time of the conftest.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
