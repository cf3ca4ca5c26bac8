"""`python -m tokenkit.train_zett_hn --gin_file=experiments/zett_hn_tiny.gin --workdir=...`

Trains an embedding hypernetwork for zero-shot tokenizer transfer on a frozen base model
(tokenizers sampled per batch; see `tokenkit.training.zett_hn`). A workdir that already
holds checkpoints is resumed; the trained hypernetwork is exported to `WORKDIR/hypernet`,
which `python -m tokenkit.zett --gin_param='zett.hypernet="WORKDIR/hypernet"'` applies to
any tokenizer.
"""

from pathlib import Path

from tokenkit import entry
from tokenkit.training import zett_hn


def main(workdir: Path | None) -> None:
    zett_hn.train_zett_hn(workdir)


if __name__ == "__main__":
    entry.run(main)
