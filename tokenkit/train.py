"""`python -m tokenkit.train --gin_file=experiments/alm_byte.gin --workdir=...`

Trains as the Gin files say: SFT of one model, tokenizer transfer by
self-distillation, or cross-tokenizer distillation (see docs/experiments.md). A workdir
that already holds checkpoints is resumed from the latest one.
"""

from pathlib import Path

from tokenkit import entry
from tokenkit.training import trainer


def main(workdir: Path | None) -> None:
    trainer.train(workdir)


if __name__ == "__main__":
    entry.run(main)
