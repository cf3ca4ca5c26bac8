"""Conventions shared by every `python -m tokenkit.<name>` entrypoint.

An entrypoint is a thin absl app: it imports the modules whose Gin configurables it
needs, then calls `run(main)`. Every entrypoint has the three flags below (one may add
named shorthands for a few of its own Gin parameters, see `run`):

  --gin_file   (repeatable) Gin files, resolved against the working directory and the
               repository root, so `experiments/x.gin` and `include 'gin/...'` work from
               anywhere.
  --gin_param  (repeatable) single bindings, applied after the files.
  --workdir    where the run writes its outputs (checkpoints, metrics, the operative
               config).

Gin is parsed before any heavy work: an unknown configurable or a misspelt parameter
fails at once with Gin's message and the file it came from.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
from absl import app, flags, logging

from tokenkit import storage

REPO_ROOT = Path(__file__).resolve().parent.parent



def _define_flags() -> None:
    """Defines the three entrypoint flags (once per process, only when an app runs).

    Defined here rather than at import so that library code importing this module
    never adds flags to a process that is not an entrypoint.
    """
    if "gin_file" in flags.FLAGS:
        return
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config file(s); later files override earlier ones."
    )
    flags.DEFINE_multi_string(
        "gin_param", [], "Gin binding(s), e.g. --gin_param='train.steps=10'."
    )
    flags.DEFINE_string(
        "workdir", None,
        "Directory for checkpoints, metrics and the operative config (a local path or a "
        "gs:// / s3:// URL)."
    )

OPERATIVE_CONFIG_NAME = "operative_config.gin"


class GinConfigError(ValueError):
    """A Gin file or binding could not be parsed or bound."""


def gin_search_paths() -> list[Path]:
    """Directories Gin resolves relative file names and includes against, in order."""
    paths = [Path.cwd().resolve(), REPO_ROOT]
    return list(dict.fromkeys(paths))


def resolve_gin_file(name: str) -> Path:
    """Finds a Gin file on the search path, or says where it looked."""
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise GinConfigError(f"Gin file {name!r} does not exist.")
    for root in gin_search_paths():
        if (root / candidate).is_file():
            return root / candidate
    searched = ", ".join(str(p) for p in gin_search_paths())
    raise GinConfigError(f"Gin file {name!r} not found (searched: {searched}).")


def parse_gin(
    gin_files: Sequence[str] = (),
    gin_params: Sequence[str] = (),
    *,
    finalize: bool = True,
) -> list[Path]:
    """Parses Gin files then bindings; errors name the offending file or binding.

    Returns the resolved paths of the files that were parsed.
    """
    for path in gin_search_paths():
        gin.add_config_file_search_path(str(path))
    resolved = [resolve_gin_file(f) for f in gin_files]
    for path in resolved:
        try:
            gin.parse_config_file(str(path))
        except Exception as e:  # Gin raises several types; all mean a bad config.
            raise GinConfigError(f"Bad Gin config in {path}:\n{e}") from e
    for binding in gin_params:
        try:
            gin.parse_config(binding)
        except Exception as e:
            raise GinConfigError(f"Bad --gin_param {binding!r}:\n{e}") from e
    if finalize:
        gin.finalize()
    return resolved


def save_operative_config(workdir: storage.Location | None) -> storage.epath.Path | None:
    """Writes the bindings actually used so far into `workdir/operative_config.gin`.

    Only process 0 writes; the workdir may be remote. Safe to call repeatedly (each
    checkpoint rewrites it).
    """
    if workdir is None or process_index() != 0:
        return None
    return storage.write_text(storage.path(workdir) / OPERATIVE_CONFIG_NAME,
                              gin.operative_config_str())


def process_index() -> int:
    """Index of this process, without initialising JAX backends when single-process."""
    if "jax" in sys.modules:
        import jax

        try:
            return jax.process_index()
        except RuntimeError:
            return 0
    return 0


_MULTIPROCESS_ENV = (
    # (variable, value that means "more than one process")
    ("JAX_NUM_PROCESSES", lambda v: int(v) > 1),
    ("SLURM_NTASKS", lambda v: int(v) > 1),
    ("OMPI_COMM_WORLD_SIZE", lambda v: int(v) > 1),
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),
    ("MEGASCALE_NUM_SLICES", lambda v: int(v) > 1),
)


def is_multiprocess_environment(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment says this is one of several cooperating processes."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name, test in _MULTIPROCESS_ENV:
        value = environ.get(name)
        if value:
            try:
                if test(value):
                    return True
            except ValueError:
                continue
    return False


def maybe_initialize_distributed(*, preemption_service: bool = True) -> bool:
    """Calls `jax.distributed.initialize()` when running as one of several processes.

    `preemption_service`: keep JAX's preemption service, which catches SIGTERM in any
    process so that all stop at the same step (the trainer saves there); without it a
    SIGTERM ends the process, which is what an entrypoint that does not train wants.
    """
    if not is_multiprocess_environment():
        return False
    import jax

    jax.config.update("jax_enable_preemption_service", preemption_service)

    logging.info("Multi-process environment detected: initialising jax.distributed.")
    # jax reads JAX_COORDINATOR_ADDRESS itself but not the process count and id, which a
    # plain multi-host launch (tools/launch.py gpu) sets; elsewhere jax detects them.
    counts = {key: int(os.environ[name]) for key, name in
              (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
              if os.environ.get(name)}
    jax.distributed.initialize(**counts)
    logging.info(
        "Process %d of %d, %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


# Libraries whose INFO lines drown the run's own (Orbax logs every save in detail).
QUIET_LIBRARIES = ("/orbax/", "/jax/_src/", "/grain/")


class _QuietLibraries(std_logging.Filter):
    """Passes library records at WARNING and above only (run with -v 1 to see all)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
            return True
        return not any(part in record.pathname for part in QUIET_LIBRARIES)


def shorthand_bindings(shorthands: Mapping[str, str], values: Mapping[str, str | None]) -> list[str]:
    """Gin bindings for the shorthand flags that were given (`--model=x` → `score.model = 'x'`)."""
    return [
        f"{binding} = {values[name]!r}"
        for name, binding in shorthands.items()
        if values.get(name) is not None
    ]


def compilation_cache_dir() -> Path:
    """Where compiled XLA programs are kept between runs: `$JAX_COMPILATION_CACHE_DIR`,
    else `$TOKENKIT_CACHE/jax` (default `~/.cache/tokenkit/jax`)."""
    explicit = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if explicit:
        return Path(explicit)
    root = os.environ.get("TOKENKIT_CACHE") or Path.home() / ".cache" / "tokenkit"
    return Path(root) / "jax"


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache for every entrypoint.

    Scoring, generation and training compile one program per batch shape; a second run
    (or a second evaluation of the same shapes) then loads them instead of compiling
    (seconds per shape on a CPU host, minutes on a TPU for a large model).
    """
    import jax

    jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))
    # Cache everything that took measurable time to compile; tiny programs are cheaper
    # to compile again than to look up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run(
    main: Callable[..., Any],
    *,
    workdir_required: bool = False,
    shorthands: Mapping[str, str] | None = None,
    base_gin_files: Callable[[str | None], Sequence[str]] | None = None,
    save_config: bool = True,
    preemption_service: bool = True,
) -> None:
    """Runs an entrypoint: parse flags and Gin, then `main(workdir=...)`.

    `main` is a Gin-configurable function (or calls one); it receives the workdir (an
    `etils.epath.Path`, local or remote, see `tokenkit.storage`; or None). The operative
    config is saved into the workdir when `main` returns; long-running mains also save
    it at each checkpoint.

    `shorthands` maps extra string flags to the Gin parameters they set, for
    entrypoints whose everyday use is a few values (`{"model": "score.model"}` makes
    `--model=DIR` mean `--gin_param='score.model="DIR"'`). They still go through Gin,
    so the operative config records them; an explicit `--gin_param` overrides them.

    `base_gin_files(workdir_flag)` names Gin files parsed before `--gin_file` (e.g. the
    operative config of the run an entrypoint reads); `save_config=False` leaves the
    workdir's operative config alone (for entrypoints that read a run's workdir).
    `preemption_service=False` lets SIGTERM end a multi-process run that does not train
    (see `maybe_initialize_distributed`).
    """

    _define_flags()
    shorthands = dict(shorthands or {})
    for name, binding in shorthands.items():
        if name not in flags.FLAGS:
            flags.DEFINE_string(name, None, f"Shorthand for --gin_param='{binding}=\"...\"'.")

    def _main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
        workdir_flag = flags.FLAGS.workdir
        if workdir_required and not workdir_flag:
            raise app.UsageError("--workdir is required for this entrypoint.")
        try:
            short = shorthand_bindings(
                shorthands, {name: flags.FLAGS[name].value for name in shorthands}
            )
            base = list(base_gin_files(workdir_flag)) if base_gin_files else []
            parse_gin([*base, *flags.FLAGS.gin_file], [*short, *flags.FLAGS.gin_param])
        except (GinConfigError, FileNotFoundError) as e:
            logging.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        logging.get_absl_handler().addFilter(_QuietLibraries())
        enable_compilation_cache()
        maybe_initialize_distributed(preemption_service=preemption_service)
        workdir = storage.path(workdir_flag) if workdir_flag else None
        if workdir is not None and process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
        main(workdir=workdir)
        if save_config:
            save_operative_config(workdir)

    app.run(_main)
