"""Copies a finished training run's exported model into `data/models/<name>/`.

    python tools/publish_tiny_model.py --workdir=workdirs/tiny_teacher --name=tiny_teacher

The exported Hugging Face checkpoint (config, safetensors, tokenizer) is copied as is,
with `training.json` beside it: the run's final evaluation, its step count and the
operative Gin config it was trained with, so the model documents how to remake it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json", "tokenizer.model")


def publish(workdir: Path, name: str, data_dir: Path = REPO / "data" / "models") -> Path:
    """Copies `workdir/export` to `data_dir/name`; returns the destination."""
    export = workdir / "export"
    if not (export / "config.json").is_file():
        raise FileNotFoundError(f"{export} holds no exported model (did the run finish?).")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    evals = [r for r in records if r.get("split") == "eval"]
    trains = [r for r in records if r.get("split") == "train"]
    destination = data_dir / name
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for file in EXPORT_FILES:
        if (export / file).is_file():
            shutil.copy2(export / file, destination / file)
    summary = {
        "steps": trains[-1]["step"] if trains else 0,
        "final_train_loss": trains[-1].get("loss") if trains else None,
        "final_eval": evals[-1] if evals else None,
        "operative_config": (workdir / "operative_config.gin").read_text()
        if (workdir / "operative_config.gin").is_file() else None,
    }
    (destination / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    destination = publish(args.workdir, args.name)
    print(f"Published {args.workdir / 'export'} to {destination}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
