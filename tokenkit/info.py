"""`python -m tokenkit.info`: what this installation runs on.

Prints the versions of the stack, the accelerator devices JAX sees, and what the embedded
tiny world (`data/`) contains. The first thing to run on a new GPU host or TPU VM.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import gin

from tokenkit import entry

STACK = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "gin-config",
    "transformers", "tokenizers", "sentencepiece", "lm-eval", "seqio", "torch", "wandb",
)


def package_versions(names: tuple[str, ...] = STACK) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def tiny_world_contents(data_dir: Path = entry.REPO_ROOT / "data") -> dict[str, list[str]]:
    """Names of the corpus files, tokenizers and models shipped in `data/`."""
    contents = {}
    for kind, pattern in (
        ("corpus", "corpus/**/*.jsonl"),
        ("tokenizers", "tokenizers/*/tokenizer.json"),
        ("models", "models/*/config.json"),
    ):
        found = sorted(data_dir.glob(pattern))
        if kind == "corpus":
            contents[kind] = [str(p.relative_to(data_dir)) for p in found]
        else:
            contents[kind] = [p.parent.name for p in found]
    return contents


@gin.configurable(denylist=["workdir"])
def info(workdir: Path | None = None, *, show_devices: bool = True) -> str:
    """Builds (and prints) the report; returns it for tests and callers."""
    del workdir  # info writes nothing
    lines = [f"python {platform.python_version()} on {platform.platform()}"]
    for name, version in package_versions().items():
        lines.append(f"  {name:18s} {version or '(not installed)'}")
    if show_devices:
        import jax

        devices = jax.devices()
        lines.append(
            f"JAX backend {jax.default_backend()}: {len(devices)} device(s), "
            f"{jax.process_count()} process(es)"
        )
        for device in devices[:16]:
            lines.append(f"  {device}")
        if len(devices) > 16:
            lines.append(f"  ... and {len(devices) - 16} more")
    for kind, names in tiny_world_contents().items():
        lines.append(f"tiny world {kind}: {', '.join(names) if names else '(none)'}")
    report = "\n".join(lines)
    print(report)
    return report


def main(workdir: Path | None = None) -> None:
    info(workdir)


if __name__ == "__main__":
    entry.run(main)
