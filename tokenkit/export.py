"""`python -m tokenkit.export --workdir=RUN [--step=N] --output=DIR`

Writes the Hugging Face checkpoint of a saved step of a training run (default: the
latest), exactly as the trainer exports at the end of a run (`training.export`): LoRA
merged, the vocabulary trimmed to the tokenizer, the tokenizer's special-token ids in
`config.json`, tokenizer and chat template, and for byte-level students trained with
input-id expansion the expansion with a modeling file transformers loads with
`trust_remote_code=True`.

The run's setup comes from `RUN/operative_config.gin`; `--gin_file` / `--gin_param`
apply after it (e.g. `--gin_param="build_run.student_model='/new/place/of/the/model'"`
when the checkpoint the run started from has moved). RUN and DIR may be remote
(`gs://...`). The run's workdir is only read.
"""

from __future__ import annotations

import tempfile

from absl import app, flags

from tokenkit import entry, storage
from tokenkit.training import export as export_lib
from tokenkit.training import trainer  # noqa: F401  (registers every configurable a run binds)

flags.DEFINE_string("output", None, "Directory (local or gs://...) to write the HF checkpoint to.")
flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")


def operative_config(workdir: str | None) -> list[str]:
    """The run's operative config, as a local file Gin can parse."""
    if not workdir:
        return []
    source = storage.path(workdir) / entry.OPERATIVE_CONFIG_NAME
    if not source.exists():
        raise FileNotFoundError(
            f"{source} does not exist: --workdir must be a training run's directory."
        )
    if not storage.is_remote(source):
        return [str(source)]
    local = tempfile.NamedTemporaryFile("w", suffix=".gin", delete=False)
    with local:
        local.write(source.read_text())
    return [local.name]


def main(workdir: storage.epath.Path | None) -> None:
    if not flags.FLAGS.output:
        raise app.UsageError("--output is required (where the HF checkpoint goes).")
    export_lib.export_checkpoint(workdir, flags.FLAGS.output, step=flags.FLAGS.step)


if __name__ == "__main__":
    entry.run(main, workdir_required=True, base_gin_files=operative_config, save_config=False,
              preemption_service=False)
