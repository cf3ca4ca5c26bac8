"""Entrypoint conventions: the three flags, Gin search path, fail-fast config errors,
the operative config in the workdir, multi-process detection."""

import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from tests.fake_gcs import fake_gcs  # noqa: F401  (fixture)
from tokenkit import entry
from tools import build_file

REPO = Path(__file__).resolve().parent.parent


# `python -m tokenkit.lm_eval` is lm-eval's own command line with our backend registered
# (its flags are lm-eval's: --model, --tasks, ...), not an absl app.
NOT_ABSL_APPS = {"tokenkit.lm_eval"}


def _entrypoint_modules() -> list[str]:
    modules = []
    for path in sorted((REPO / "tokenkit").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO).with_suffix("")
        if path.name == "__main__.py":
            modules.append(".".join(rel.parent.parts))
        elif build_file.is_entrypoint(path):
            modules.append(".".join(rel.parts))
    return [m for m in modules if m not in NOT_ABSL_APPS]


def _run(args: list[str], cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300, **kwargs,
    )


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_entrypoints_exist():
    assert "tokenkit.info" in _entrypoint_modules()


@pytest.mark.parametrize("module", _entrypoint_modules())
def test_helpfull_lists_the_three_flags(module):
    result = _run(["-m", module, "--helpfull"])
    # absl exits 1 after printing help; anything else (a crash on import) is a failure.
    assert result.returncode in (0, 1) and not result.stderr.strip(), result.stderr[-2000:]
    for flag in ("--gin_file", "--gin_param", "--workdir"):
        assert flag in result.stdout, f"{module} --helpfull does not list {flag}"


def test_gin_typo_fails_fast_naming_the_file(tmp_path):
    bad = tmp_path / "typo.gin"
    bad.write_text("info.show_devicez = False\n")
    result = _run(["-m", "tokenkit.info", f"--gin_file={bad}"])
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "show_devicez" in result.stderr
    # It failed before doing the work: no report was printed.
    assert "JAX backend" not in result.stdout


def test_unknown_configurable_in_binding_fails():
    result = _run(["-m", "tokenkit.info", "--gin_param=no_such_thing.x = 1"])
    assert result.returncode == 2
    assert "no_such_thing" in result.stderr and "--gin_param" in result.stderr


def test_missing_gin_file_says_where_it_looked(tmp_path):
    with pytest.raises(entry.GinConfigError, match="not found.*searched"):
        entry.resolve_gin_file("experiments/does_not_exist.gin")


def test_gin_files_and_includes_resolve_from_any_cwd(tmp_path, monkeypatch):
    # A file given relative to the repository root, which includes another one by a
    # repository-relative name, parses from an unrelated working directory.
    frag_dir = REPO / "gin" / "_test_tmp"
    frag_dir.mkdir(parents=True, exist_ok=True)
    try:
        (frag_dir / "inner.gin").write_text("info.show_devices = False\n")
        (frag_dir / "outer.gin").write_text("include 'gin/_test_tmp/inner.gin'\n")
        monkeypatch.chdir(tmp_path)
        import tokenkit.info  # noqa: F401  registers the configurable

        parsed = entry.parse_gin(["gin/_test_tmp/outer.gin"], finalize=False)
        assert parsed == [frag_dir / "outer.gin"]
        assert gin.query_parameter("info.show_devices") is False
    finally:
        for f in frag_dir.glob("*"):
            f.unlink()
        frag_dir.rmdir()


def test_operative_config_is_saved(tmp_path):
    workdir = tmp_path / "run"
    result = _run([
        "-m", "tokenkit.info", f"--workdir={workdir}",
        "--gin_param=info.show_devices = False",
    ])
    assert result.returncode == 0, result.stderr[-2000:]
    config = (workdir / entry.OPERATIVE_CONFIG_NAME).read_text()
    assert "info.show_devices = False" in config


@gin.configurable
def _remote_probe(value: int = 1) -> int:
    return value


def test_operative_config_goes_to_a_remote_workdir(fake_gcs):
    entry.parse_gin([], ["_remote_probe.value = 3"])
    assert _remote_probe() == 3
    path = entry.save_operative_config("gs://bucket/run")
    assert str(path) == "gs://bucket/run/operative_config.gin"
    assert "_remote_probe.value = 3" in (fake_gcs / "bucket" / "run" / "operative_config.gin").read_text()


def test_positional_arguments_are_refused():
    result = _run(["-m", "tokenkit.info", "stray"])
    assert result.returncode != 0
    assert "stray" in result.stderr


def test_shorthand_bindings_are_gin_literals():
    shorthands = {"model": "score.model", "text_file": "score.text_file", "n": "x.n"}
    bindings = entry.shorthand_bindings(
        shorthands, {"model": "dir with 'quotes\"", "text_file": None, "n": "3"}
    )
    # Unset shorthands bind nothing; values are always strings, quoted for Gin.
    assert bindings == ["score.model = 'dir with \\'quotes\"'", "x.n = '3'"]
    import tokenkit.info  # noqa: F401  a registered parameter to bind the value to

    gin.parse_config(bindings[0].replace("score.model", "info.show_devices"))
    assert gin.query_parameter("info.show_devices") == "dir with 'quotes\""


def test_score_shorthand_flags_are_listed():
    result = _run(["-m", "tokenkit.score", "--helpfull"])
    for flag in ("--model", "--tokenizer", "--text_file"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"JAX_NUM_PROCESSES": "1"}, False),
        ({"JAX_NUM_PROCESSES": "4"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "8"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "garbage"}, False),
    ],
)
def test_multiprocess_detection(environ, expected):
    assert entry.is_multiprocess_environment(environ) is expected


def test_compilation_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("TOKENKIT_CACHE", str(tmp_path))
    assert entry.compilation_cache_dir() == tmp_path / "jax"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert entry.compilation_cache_dir() == tmp_path / "elsewhere"


def test_an_entrypoint_fills_the_persistent_compilation_cache(tmp_path):
    cache = tmp_path / "jax"
    text = tmp_path / "lines.txt"
    text.write_text("The river runs past the old mill.\nA second line.\n")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    model = REPO / "data" / "models" / "tiny_teacher"
    subprocess.run(
        [sys.executable, "-m", "tokenkit.score", f"--model={model}",
         f"--tokenizer={model}:source=Llama3", f"--text_file={text}"],
        check=True, env=env, cwd=tmp_path, capture_output=True,
    )
    assert any(p.name.startswith("jit__score_packed_batch") for p in cache.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("service", [True, False])
def test_sigterm_with_and_without_the_preemption_service(tmp_path, service):
    """Two processes: with JAX's preemption service (the trainer) SIGTERM only raises
    its flag; without it (score, eval, export) SIGTERM ends the processes."""
    import signal
    import time

    from tools import multiprocess

    code = ("import sys, time\nfrom tokenkit import entry\n"
            f"entry.maybe_initialize_distributed(preemption_service={service})\n"
            "print('ready', flush=True)\ntime.sleep(300)\n")
    group = multiprocess.start([sys.executable, "-c", code], log_dir=tmp_path)
    deadline = time.monotonic() + 120
    while not all("ready" in group.log(i) for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in group.procs)
        time.sleep(0.2)
    group.send_signal(signal.SIGTERM)
    time.sleep(3)
    alive = [p.poll() is None for p in group.procs]
    group.kill()
    group.close()
    assert alive == [service, service]
