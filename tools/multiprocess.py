"""Run a command as N cooperating JAX processes on this machine (a pod without a pod).

    python tools/multiprocess.py --processes=2 --devices=2 -- \\
        python -m tokenkit.train --gin_file=experiments/alm_byte.gin --workdir=/tmp/run

starts the command N times, each process with

| variable | value |
|---|---|
| `JAX_COORDINATOR_ADDRESS` | `localhost:<a free port>` (process 0 serves it) |
| `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` | N / 0..N-1 |
| `XLA_FLAGS` | `--xla_force_host_platform_device_count=K` (K CPU devices per process) |
| `JAX_PLATFORMS` | `cpu` |

so every tokenkit entrypoint initialises `jax.distributed` (`tokenkit.entry`) and sees
N x K devices, of which K are its own; cross-process collectives run over gloo. Each
process's output goes to `--log_dir/process-<i>.log` (default: a temporary directory,
printed); the exit status is 0 when every process exited 0, else the first failure's.
A process that fails or hangs past `--timeout` takes the others down with it, as a
real pod would.

Tests import `start` (a running `ProcessGroup`: signal one or all processes, wait) and
`run` (start and wait).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (the coordinator's)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_environment(
    process_id: int, num_processes: int, devices_per_process: int, port: int,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of process `process_id` of a local group (see the module docstring).

    An `XLA_FLAGS` in `base` keeps its other flags; its device count is replaced.
    """
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    pythonpath = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({
        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(process_id),
        "XLA_FLAGS": " ".join(flags),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
    })
    return env


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    """One process's exit status and output."""

    process_id: int
    returncode: int
    log_file: Path

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


class ProcessGroup:
    """N running processes of one command (see `start`)."""

    def __init__(self, procs: list[subprocess.Popen], log_files: list[Path]) -> None:
        self.procs = procs
        self.log_files = log_files
        self._handles: list = []

    def __len__(self) -> int:
        return len(self.procs)

    def log(self, process_id: int) -> str:
        """What process `process_id` has printed so far."""
        return self.log_files[process_id].read_text(errors="replace")

    def send_signal(self, sig: int, process_ids: Sequence[int] | None = None) -> None:
        """Sends `sig` to the given processes (default: all) that are still running."""
        for i in range(len(self.procs)) if process_ids is None else process_ids:
            if self.procs[i].poll() is None:
                self.procs[i].send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to every process still running (each is its own process group, so
        children such as Grain workers go too)."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            proc.wait()

    def wait(self, timeout: float | None = None, *, grace_s: float = 60.0) -> list[ProcessResult]:
        """Waits for every process; when one fails the others get `grace_s` seconds to
        follow before they are killed (a failed peer would otherwise leave them blocked
        in a collective). Past `timeout` seconds all are killed and TimeoutError raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at = None
        while any(p.poll() is None for p in self.procs):
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.kill()
                raise TimeoutError(
                    f"Processes still running after {timeout:.0f}s; logs: "
                    + ", ".join(str(f) for f in self.log_files)
                )
            if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs):
                failed_at = now
            if failed_at is not None and now - failed_at > grace_s:
                self.kill()
            time.sleep(0.2)
        self.close()
        return [ProcessResult(i, p.returncode, f)
                for i, (p, f) in enumerate(zip(self.procs, self.log_files))]

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []


def start(
    command: Sequence[str],
    *,
    num_processes: int = 2,
    devices_per_process: int = 2,
    log_dir: str | Path | None = None,
    cwd: str | Path = REPO,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> ProcessGroup:
    """Starts `command` as `num_processes` processes joined by `jax.distributed`.

    Args:
      command: the program and its arguments (e.g. `[sys.executable, "-m",
        "tokenkit.train", ...]`); every process runs the same one.
      num_processes, devices_per_process: the group's shape.
      log_dir: where `process-<i>.log` go (created; default: a new temporary directory).
      cwd: working directory of the processes (default: the repository root).
      env: base environment (default: this process's); the group's variables override it.
      port: the coordinator's port (default: a free one).
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"num_processes ({num_processes}) and devices_per_process "
            f"({devices_per_process}) must be positive."
        )
    if not command:
        raise ValueError("No command to run.")
    log_dir = Path(tempfile.mkdtemp(prefix="tokenkit-mp-") if log_dir is None else log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    procs, logs, handles = [], [], []
    for i in range(num_processes):
        log_file = log_dir / f"process-{i}.log"
        handle = open(log_file, "w")
        procs.append(subprocess.Popen(
            list(command), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
            env=process_environment(i, num_processes, devices_per_process, port, env),
            start_new_session=True,
        ))
        logs.append(log_file)
        handles.append(handle)
    group = ProcessGroup(procs, logs)
    group._handles = handles
    return group


def run(command: Sequence[str], *, timeout: float | None = 900, **kwargs) -> list[ProcessResult]:
    """Starts `command` as a group (arguments of `start`) and waits for all processes."""
    return start(command, **kwargs).wait(timeout)


def check(results: Sequence[ProcessResult], tail: int = 4000) -> None:
    """Raises AssertionError with the end of each failed process's log."""
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise AssertionError("\n".join(
            f"process {r.process_id} exited {r.returncode}; log {r.log_file}:\n{r.log[-tail:]}"
            for r in failed
        ))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--processes=N] [--devices=K] [--log_dir=DIR] -- COMMAND ...",
    )
    parser.add_argument("--processes", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process (default 2)")
    parser.add_argument("--log_dir", default=None, help="where process-<i>.log go (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before every process is killed")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    group = start(command, num_processes=args.processes, devices_per_process=args.devices,
                  log_dir=args.log_dir, cwd=Path.cwd(), port=args.port)
    print(f"{len(group)} processes; logs in {group.log_files[0].parent}", file=sys.stderr)
    try:
        results = group.wait(args.timeout)
    except KeyboardInterrupt:
        group.send_signal(signal.SIGTERM)
        results = group.wait(args.timeout)
    for r in results:
        print(f"process {r.process_id}: exit {r.returncode} ({r.log_file})", file=sys.stderr)
    failed = [r for r in results if r.returncode != 0]
    if not failed:
        return 0
    print(f"--- last lines of process {failed[0].process_id} ---\n"
          + "\n".join(failed[0].log.splitlines()[-20:]), file=sys.stderr)
    return failed[0].returncode


if __name__ == "__main__":
    sys.exit(main())
