"""Launch a tokenkit run on a Cloud TPU VM (all its workers) or on several GPU hosts.

    python tools/launch.py tpu up --name=NAME --zone=ZONE --accelerator_type=v4-32 \\
        --gin_file=experiments/llama3_to_qwen2_tpu.gin --gin_file=gin/mesh/tpu_v4_32.gin \\
        --workdir=/mnt/tokenkit/llama3_to_qwen2
    python tools/launch.py tpu logs --name=NAME --zone=ZONE --follow
    python tools/launch.py tpu stop --name=NAME --zone=ZONE
    python tools/launch.py tpu delete --name=NAME --zone=ZONE
    python tools/launch.py gpu up --hosts=gpu-a,gpu-b --gin_file=... --workdir=...

TPU (`gcloud compute tpus ...`): `create` makes the VM (`tpu-vm create`, optionally
`--spot` / `--preemptible`) or, with `--queued`, a queued resource that is polled until
ACTIVE; `up` reuses an existing READY VM. `setup` ships the code and installs the pinned
platform requirements on every worker; `run` starts the entrypoint on every worker
(`--worker=all`) as a detached process whose output goes to a log file; `logs` tails or
fetches that file, `stop` sends SIGTERM (the trainer saves a checkpoint and exits),
`delete` removes the VM or queued resource. `exec` runs any command on all workers.
`up` = create-or-reuse + setup + run (+ logs with `--follow`); `--prepare=CMD` runs CMD
on every host before each start (e.g. mounting the shared workdir).

GPU hosts (`ssh` / `scp`): the same `setup` / `run` / `logs` / `stop` / `up`, one process
per host with JAX_COORDINATOR_ADDRESS (the first host), JAX_NUM_PROCESSES and
JAX_PROCESS_ID set for it.

Code is shipped as a `git archive` of `--ref` (default HEAD), copied to every host and
unpacked into `~/tokenkit/src/<commit>`: it needs no git credentials or network access to
the repository on the hosts, ships exactly one commit (unpushed ones included), and every
host runs the same bytes. Uncommitted changes are not shipped (a warning says so).
On every host: `~/tokenkit/venv` (Python `--python`, made with uv when the host lacks
it), `~/tokenkit/runs/<run_name>/{log.txt,pid}`.

`--dry_run` prints every command in order and runs none (local, read-only git queries
that check the ref and the Gin files still run). Decisions that depend on a query's
answer are then taken as for a fresh VM.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REMOTE = "tokenkit"  # relative to the remote user's home directory
ENTRYPOINTS = ("train", "train_zett_hn", "zett", "eval", "eval_lockstep", "score", "export")
REQUIREMENTS = {"tpu": "third_party/requirements-tpu.txt", "gpu": "third_party/requirements-cuda.txt"}
DEFAULT_PORT = 8476
# URL schemes a workdir may have (tokenkit.storage.REMOTE_SCHEMES; this program does not
# import the package).
REMOTE_WORKDIRS = ("gs", "s3", "az", "hf")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VM_ABSENT = ("NOT_FOUND", "not found", "was not found")


class LaunchError(RuntimeError):
    """A launch cannot go on; the message says why and what to do."""


# --------------------------------------------------------------------------------------
# Running (or printing) commands


@dataclass
class Runner:
    """Runs argument lists (never through a local shell), or prints them in a dry run."""

    dry_run: bool = False

    def run(self, argv: Sequence[str]) -> None:
        """Runs a command that changes something; its output goes to the terminal."""
        self._print(argv)
        if self.dry_run:
            return
        rc = subprocess.call(list(argv))
        if rc != 0:
            raise LaunchError(f"Command failed with exit status {rc}: {shlex.join(argv)}")

    def query(self, argv: Sequence[str]) -> subprocess.CompletedProcess | None:
        """Runs a read-only remote query and returns its result; None in a dry run."""
        self._print(argv)
        if self.dry_run:
            return None
        return subprocess.run(list(argv), capture_output=True, text=True)

    def _print(self, argv: Sequence[str]) -> None:
        prefix = "[dry run] " if self.dry_run else "+ "
        print(prefix + shlex.join(argv), flush=True)


def require_tool(name: str, hint: str) -> None:
    """Fails unless `name` is an executable on PATH."""
    if shutil.which(name) is None:
        raise LaunchError(f"{name!r} was not found on PATH. {hint}")


# --------------------------------------------------------------------------------------
# The code to ship and the command to run


def git(repo: Path, *args: str) -> str:
    """Output of a local, read-only git command in `repo`."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_commit(repo: Path, ref: str) -> str:
    """The full commit id of `ref`; warns when the working tree has uncommitted changes."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"--ref {ref!r} is not a commit of {repo}.")
    commit = proc.stdout.strip()
    if git(repo, "status", "--porcelain", "--untracked-files=no"):
        print(f"warning: uncommitted changes in {repo} are not shipped (shipping {ref} = {commit[:12]}).",
              file=sys.stderr)
    return commit


def check_in_commit(repo: Path, commit: str, path: str, what: str) -> None:
    """Fails unless `path` (relative to the repository root) is a file in `commit`."""
    rel = Path(path)
    if rel.is_absolute():
        try:
            rel = rel.resolve().relative_to(repo.resolve())
        except ValueError:
            raise LaunchError(f"{what} {path!r} is outside the repository {repo}; only files "
                              "of the shipped commit exist on the hosts.") from None
    proc = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}:{rel.as_posix()}"],
                          capture_output=True)
    if proc.returncode != 0:
        hint = " (it exists here but is not committed)" if (repo / rel).is_file() else ""
        raise LaunchError(f"{what} {path!r} is not in commit {commit[:12]} of {repo}{hint}.")


@dataclass(frozen=True)
class Experiment:
    """One entrypoint invocation: `python -m tokenkit.<entrypoint> --gin_file=... ...`."""

    gin_files: tuple[str, ...]
    gin_params: tuple[str, ...] = ()
    workdir: str = ""
    entrypoint: str = "train"
    run_name: str = ""

    def args(self) -> list[str]:
        """The arguments after the Python interpreter."""
        return (["-m", f"tokenkit.{self.entrypoint}"]
                + [f"--gin_file={g}" for g in self.gin_files]
                + [f"--gin_param={p}" for p in self.gin_params]
                + [f"--workdir={self.workdir}"])


def make_experiment(args: argparse.Namespace, repo: Path, commit: str) -> Experiment:
    """Checks the experiment against the shipped commit before anything remote happens."""
    if not args.gin_file:
        raise LaunchError("Give at least one --gin_file (an experiment, e.g. experiments/alm_byte.gin).")
    if args.entrypoint not in ENTRYPOINTS:
        raise LaunchError(f"--entrypoint {args.entrypoint!r} unknown (valid: {', '.join(ENTRYPOINTS)}).")
    for gin_file in args.gin_file:
        check_in_commit(repo, commit, gin_file, "Gin file")
    if not args.workdir:
        raise LaunchError("Give --workdir: where checkpoints, metrics and the export go on the hosts.")
    scheme = re.match(r"^([a-z0-9]+)://", args.workdir)
    if scheme and scheme.group(1) not in REMOTE_WORKDIRS:
        raise LaunchError(
            f"--workdir {args.workdir!r}: tokenkit writes to local paths and to "
            f"{', '.join(s + '://' for s in REMOTE_WORKDIRS)} URLs (tokenkit/storage.py); give "
            "one of those, or a directory every host sees at the same path (see docs/pods.md)."
        )
    parse_env(args.env)
    return Experiment(tuple(args.gin_file), tuple(args.gin_param), args.workdir, args.entrypoint,
                      run_name_of(args))


def make_archive(repo: Path, commit: str, runner: Runner, out_dir: Path) -> Path:
    """`git archive` of `commit` into `out_dir` (printed, not written, in a dry run)."""
    path = out_dir / f"tokenkit-{commit[:12]}.tar.gz"
    runner.run(["git", "-C", str(repo), "archive", "--format=tar.gz", f"--output={path}", commit])
    return path


# --------------------------------------------------------------------------------------
# Remote scripts (bash, every user-given value quoted)


def remote(commands: Sequence[str]) -> str:
    """A one-line remote command running `commands` in order with bash (whatever the login
    shell), from the home directory, stopping at the first failure."""
    script = ["set -eu", 'cd "$HOME"', *commands]
    return "bash -c " + shlex.quote(" ".join(c if c.endswith("&") else c + ";" for c in script))


def setup_script(commit: str, archive_name: str, requirements: str, python: str) -> list[str]:
    """Unpack the shipped code and install the pinned requirements into ~/tokenkit/venv."""
    src = f"{REMOTE}/src/{commit}"
    py = shlex.quote(python)
    venv_python = f'"$HOME/{REMOTE}/venv/bin/python"'
    return [
        f"mkdir -p {src}",
        f"tar -xzf {archive_name} -C {src}",
        f"rm -f {archive_name}",
        # TPU VM images ship an older Python; uv then provides the requested one.
        f"if [ ! -x {REMOTE}/venv/bin/python ]; then "
        f"if command -v python{py} >/dev/null 2>&1; then python{py} -m venv {REMOTE}/venv; "
        f'else python3 -m pip install --user --quiet uv && "$HOME/.local/bin/uv" venv --seed '
        f"--python {py} {REMOTE}/venv; fi; fi",
        f"cd {src}",
        f"{venv_python} -m pip install --quiet -r {shlex.quote(requirements)}",
        f"{venv_python} -m pip install --quiet --no-deps -e .",
        f'echo "tokenkit {commit[:12]} installed on $(hostname)"',
    ]


def run_script(commit: str, exp: Experiment, env: dict[str, str]) -> list[str]:
    """Start the entrypoint detached (own session, survives the ssh), output to the log."""
    run_dir = f'"$HOME/{REMOTE}/runs/{exp.run_name}"'
    cmd = f'"$HOME/{REMOTE}/venv/bin/python" ' + shlex.join(exp.args())
    return [
        f"cd {REMOTE}/src/{commit}",
        f"mkdir -p {run_dir}",
        f'if [ -f {run_dir}/pid ] && kill -0 "$(cat {run_dir}/pid)" 2>/dev/null; then '
        f'echo "run {exp.run_name} is already running on $(hostname)" >&2; exit 1; fi',
        *[f"export {k}={shlex.quote(v)}" for k, v in env.items()],
        f"nohup setsid {cmd} >> {run_dir}/log.txt 2>&1 < /dev/null &",
        f"echo $! > {run_dir}/pid",
        f'echo "started {exp.run_name} on $(hostname): ~/{REMOTE}/runs/{exp.run_name}/log.txt"',
    ]


def log_path(run_name: str) -> str:
    return f"{REMOTE}/runs/{run_name}/log.txt"


def logs_script(run_name: str, follow: bool, lines: int) -> list[str]:
    return [shlex.join(["tail", "-n", str(int(lines))] + (["-F"] if follow else []) + [log_path(run_name)])]


def stop_script(run_name: str, force: bool) -> list[str]:
    """SIGTERM to the run's main process (the trainer checkpoints at the next step boundary
    and stops its data workers), or SIGKILL to its whole process group with `force`."""
    pid = f"{REMOTE}/runs/{run_name}/pid"
    target = f'-KILL -- -"$(cat {pid})"' if force else f'-TERM "$(cat {pid})"'
    return [
        f'if [ ! -f {pid} ]; then echo "no run {run_name} on $(hostname)"; exit 0; fi',
        f'if kill {target} 2>/dev/null; then echo "signalled {run_name} on $(hostname)"; '
        f'else echo "{run_name} is not running on $(hostname)"; fi',
    ]


# --------------------------------------------------------------------------------------
# Cloud TPU


@dataclass(frozen=True)
class Tpu:
    """How to reach one TPU VM (or the node of a queued resource) with gcloud."""

    name: str
    zone: str
    project: str | None = None
    queued_resource: str | None = None

    def gcloud(self, *args: str) -> list[str]:
        out = ["gcloud", "compute", "tpus", *args, f"--zone={self.zone}"]
        return out + ([f"--project={self.project}"] if self.project else [])

    def ssh(self, script: Sequence[str], worker: str = "all") -> list[str]:
        return self.gcloud("tpu-vm", "ssh", self.name, f"--worker={worker}", f"--command={remote(script)}")

    def scp(self, src: str, dst: str, worker: str = "all") -> list[str]:
        return self.gcloud("tpu-vm", "scp", src, dst, f"--worker={worker}")


def _absent(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and any(s in proc.stderr for s in _VM_ABSENT)


def describe_vm(tpu: Tpu, runner: Runner) -> dict | None:
    """The VM's description ({} in a dry run), or None when it does not exist."""
    proc = runner.query(tpu.gcloud("tpu-vm", "describe", tpu.name, "--format=json"))
    if proc is None:
        return {}
    if _absent(proc):
        return None
    if proc.returncode != 0:
        raise LaunchError(f"Could not describe TPU VM {tpu.name!r}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def queued_state(tpu: Tpu, runner: Runner) -> str | None:
    """State of the queued resource ("" in a dry run), or None when it does not exist."""
    proc = runner.query(tpu.gcloud("queued-resources", "describe", tpu.queued_resource,
                                   "--format=value(state.state)"))
    if proc is None:
        return ""
    if _absent(proc):
        return None
    if proc.returncode != 0:
        raise LaunchError(f"Could not describe queued resource {tpu.queued_resource!r}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def create_tpu(tpu: Tpu, args: argparse.Namespace, runner: Runner) -> None:
    """Creates the VM (blocking until it exists) or the queued resource (polled until ACTIVE)."""
    if not args.accelerator_type:
        raise LaunchError(f"TPU {tpu.name!r} does not exist; give --accelerator_type (e.g. v4-32) to create it.")
    if tpu.queued_resource:
        cmd = tpu.gcloud("queued-resources", "create", tpu.queued_resource, f"--node-id={tpu.name}",
                         f"--accelerator-type={args.accelerator_type}", f"--runtime-version={args.version}")
        runner.run(cmd + (["--spot"] if args.spot else []))
        wait_active(tpu, args, runner)
        return
    cmd = tpu.gcloud("tpu-vm", "create", tpu.name, f"--accelerator-type={args.accelerator_type}",
                     f"--version={args.version}")
    runner.run(cmd + (["--spot"] if args.spot else []) + (["--preemptible"] if args.preemptible else []))


def wait_active(tpu: Tpu, args: argparse.Namespace, runner: Runner) -> None:
    """Polls the queued resource until ACTIVE; fails on FAILED / SUSPENDED or the deadline."""
    deadline = time.monotonic() + args.wait_minutes * 60
    while True:
        state = queued_state(tpu, runner)
        if state in ("ACTIVE", ""):
            return
        if state in ("FAILED", "SUSPENDED", None):
            raise LaunchError(f"Queued resource {tpu.queued_resource!r} is {state or 'gone'}; "
                              f"delete it (tpu delete --queued) and create it again.")
        if time.monotonic() > deadline:
            raise LaunchError(f"Queued resource {tpu.queued_resource!r} still {state} after "
                              f"{args.wait_minutes} minutes.")
        print(f"queued resource {tpu.queued_resource}: {state}; waiting {args.poll_seconds}s", flush=True)
        time.sleep(args.poll_seconds)


def create_or_reuse(tpu: Tpu, args: argparse.Namespace, runner: Runner) -> dict:
    """Makes sure the TPU is READY, creating it when absent; returns its description
    ({} in a dry run, which plans for a fresh TPU)."""
    if tpu.queued_resource:
        state = queued_state(tpu, runner)
        if state in ("FAILED", "SUSPENDED") and args.recreate:
            runner.run(tpu.gcloud("queued-resources", "delete", tpu.queued_resource, "--force", "--quiet"))
            state = None
        if state is None or runner.dry_run:
            create_tpu(tpu, args, runner)
        else:
            print(f"reusing queued resource {tpu.queued_resource} ({state})", flush=True)
            wait_active(tpu, args, runner)
        return describe_vm(tpu, runner) or {}

    desc = describe_vm(tpu, runner)
    if runner.dry_run:
        create_tpu(tpu, args, runner)
        return {}
    deadline = time.monotonic() + args.wait_minutes * 60
    while desc is not None and desc.get("state") in ("CREATING", "STARTING", "RESTARTING", "REPAIRING"):
        if time.monotonic() > deadline:
            raise LaunchError(f"TPU {tpu.name!r} still {desc['state']} after {args.wait_minutes} minutes.")
        time.sleep(args.poll_seconds)
        desc = describe_vm(tpu, runner)
    if desc is not None and desc.get("state") != "READY":
        if not args.recreate:
            raise LaunchError(f"TPU {tpu.name!r} is {desc.get('state')}; pass --recreate to delete and "
                              "create it again (the run resumes from its workdir).")
        runner.run(tpu.gcloud("tpu-vm", "delete", tpu.name, "--quiet"))
        desc = None
    if desc is not None:
        print(f"reusing TPU {tpu.name} ({desc.get('acceleratorType', '?')}, READY)", flush=True)
        return desc
    create_tpu(tpu, args, runner)
    desc = describe_vm(tpu, runner)
    if desc is None:
        raise LaunchError(f"TPU {tpu.name!r} was created but `describe` does not find it.")
    return desc


def tpu_setup(tpu: Tpu, repo: Path, commit: str, args: argparse.Namespace, runner: Runner) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = make_archive(repo, commit, runner, Path(tmp))
        runner.run(tpu.scp(str(archive), f"{tpu.name}:{archive.name}"))
        runner.run(tpu.ssh(setup_script(commit, archive.name, REQUIREMENTS["tpu"], args.python)))


def tpu_env(desc: dict, args: argparse.Namespace) -> dict[str, str]:
    """Environment of the run: JAX_NUM_PROCESSES on multi-worker slices (so the entrypoint
    initialises jax.distributed, which finds the rest from the TPU metadata) + --env."""
    env = {}
    workers = len(desc.get("networkEndpoints", []))
    if workers > 1:
        env["JAX_NUM_PROCESSES"] = str(workers)
    elif not desc:
        print("note: the dry run cannot know the number of workers; a real run sets "
              "JAX_NUM_PROCESSES from `tpu-vm describe`.", flush=True)
    return env | parse_env(args.env)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise LaunchError(f"--env {item!r} must be NAME=VALUE.")
        env[key] = value
    return env


def fetch_logs_tpu(tpu: Tpu, run_name: str, workers: Sequence[str], out_dir: Path, runner: Runner) -> None:
    if not runner.dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
    for w in workers:
        runner.run(tpu.scp(f"{tpu.name}:{log_path(run_name)}", str(out_dir / f"worker-{w}.log"), worker=w))


def main_tpu(args: argparse.Namespace, runner: Runner) -> None:
    repo = Path(args.repo)
    tpu = Tpu(args.name, args.zone, args.project, (args.queued_resource or f"{args.name}-qr") if args.queued else None)
    if args.action in ("up", "setup", "run"):
        commit = resolve_commit(repo, args.ref)
        exp = make_experiment(args, repo, commit) if args.action in ("up", "run") else None
    if not runner.dry_run:
        require_tool("gcloud", "Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) "
                               "and run `gcloud auth login`.")
    if args.action == "create":
        exists = (queued_state(tpu, runner) if tpu.queued_resource else describe_vm(tpu, runner)) is not None
        if exists and not runner.dry_run:
            raise LaunchError(f"TPU {tpu.name!r} already exists; use `tpu up` to reuse it.")
        create_tpu(tpu, args, runner)
    elif args.action == "up":
        desc = create_or_reuse(tpu, args, runner)
        tpu_setup(tpu, repo, commit, args, runner)
        if args.prepare:
            runner.run(tpu.ssh([args.prepare]))
        runner.run(tpu.ssh(run_script(commit, exp, tpu_env(desc, args))))
        if args.follow:
            runner.run(tpu.ssh(logs_script(exp.run_name, True, args.lines), worker="0"))
        else:
            print(f"logs: python tools/launch.py tpu logs --name={tpu.name} --zone={tpu.zone} "
                  f"--run_name={exp.run_name} --follow", flush=True)
    elif args.action == "setup":
        tpu_setup(tpu, repo, commit, args, runner)
    elif args.action == "run":
        desc = describe_vm(tpu, runner)
        if desc is None or desc.get("state", "READY") != "READY":
            raise LaunchError(f"TPU {tpu.name!r} is {'absent' if desc is None else desc['state']}; "
                              "`tpu up` creates (or with --recreate replaces) it.")
        if args.prepare:
            runner.run(tpu.ssh([args.prepare]))
        runner.run(tpu.ssh(run_script(commit, exp, tpu_env(desc, args))))
    elif args.action == "logs":
        workers = (args.workers or "0").split(",")
        if args.fetch:
            if workers == ["all"]:
                desc = describe_vm(tpu, runner) or {}
                workers = [str(i) for i in range(max(len(desc.get("networkEndpoints", [])), 1))]
            fetch_logs_tpu(tpu, run_name_of(args), workers, Path(args.fetch), runner)
        else:
            runner.run(tpu.ssh(logs_script(run_name_of(args), args.follow, args.lines), worker=workers[0]))
    elif args.action == "stop":
        runner.run(tpu.ssh(stop_script(run_name_of(args), args.force)))
    elif args.action == "exec":
        runner.run(tpu.ssh([args.command], worker=args.workers or "all"))
    elif args.action == "delete":
        if tpu.queued_resource:
            runner.run(tpu.gcloud("queued-resources", "delete", tpu.queued_resource, "--force", "--quiet"))
        else:
            runner.run(tpu.gcloud("tpu-vm", "delete", tpu.name, "--quiet"))


def run_name_of(args: argparse.Namespace) -> str:
    """--run_name, or the stem of the first --gin_file as `run` names it."""
    name = args.run_name or (Path(args.gin_file[0]).stem if args.gin_file else "")
    if not name:
        raise LaunchError("Give --run_name (or the --gin_file the run was started with).")
    if not _RUN_NAME.match(name):
        raise LaunchError(f"--run_name {name!r} must match {_RUN_NAME.pattern}.")
    return name


# --------------------------------------------------------------------------------------
# GPU hosts over ssh


def ssh_cmd(host: str, script: Sequence[str], ssh_options: Sequence[str]) -> list[str]:
    return ["ssh", *ssh_options, host, remote(script)]


def coordinator_address(hosts: Sequence[str], args: argparse.Namespace) -> str:
    """--coordinator, or the first host (without its user@) at --port."""
    if args.coordinator:
        return args.coordinator
    return f"{hosts[0].rsplit('@', 1)[-1]}:{args.port}"


def gpu_env(hosts: Sequence[str], index: int, args: argparse.Namespace) -> dict[str, str]:
    env = {
        "JAX_COORDINATOR_ADDRESS": coordinator_address(hosts, args),
        "JAX_NUM_PROCESSES": str(len(hosts)),
        "JAX_PROCESS_ID": str(index),
    }
    return env | parse_env(args.env)


def main_gpu(args: argparse.Namespace, runner: Runner) -> None:
    repo = Path(args.repo)
    hosts = [h for h in args.hosts.split(",") if h]
    if not hosts:
        raise LaunchError("Give --hosts=HOST[,HOST...] (ssh destinations; the first coordinates).")
    opts = list(args.ssh_option)
    if args.action in ("up", "setup", "run"):
        commit = resolve_commit(repo, args.ref)
        exp = make_experiment(args, repo, commit) if args.action in ("up", "run") else None
    if not runner.dry_run:
        for tool in ("ssh", "scp"):
            require_tool(tool, "Install an OpenSSH client.")
    if args.action in ("up", "setup"):
        with tempfile.TemporaryDirectory() as tmp:
            archive = make_archive(repo, commit, runner, Path(tmp))
            for host in hosts:
                runner.run(["scp", *opts, str(archive), f"{host}:{archive.name}"])
                runner.run(ssh_cmd(host, setup_script(commit, archive.name, REQUIREMENTS["gpu"], args.python), opts))
    if args.action in ("up", "run"):
        if args.prepare:
            for host in hosts:
                runner.run(ssh_cmd(host, [args.prepare], opts))
        for i, host in enumerate(hosts):
            runner.run(ssh_cmd(host, run_script(commit, exp, gpu_env(hosts, i, args)), opts))
        if args.follow:
            runner.run(ssh_cmd(hosts[0], logs_script(exp.run_name, True, args.lines), opts))
    elif args.action == "logs":
        name = run_name_of(args)
        if args.fetch:
            out = Path(args.fetch)
            if not runner.dry_run:
                out.mkdir(parents=True, exist_ok=True)
            for i, host in enumerate(hosts):
                runner.run(["scp", *opts, f"{host}:{log_path(name)}", str(out / f"host-{i}.log")])
        else:
            runner.run(ssh_cmd(hosts[0], logs_script(name, args.follow, args.lines), opts))
    elif args.action == "stop":
        for host in hosts:
            runner.run(ssh_cmd(host, stop_script(run_name_of(args), args.force), opts))


# --------------------------------------------------------------------------------------
# Command line


def _experiment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry_run", action="store_true", default=argparse.SUPPRESS,
                   help="Print the commands in order; run none.")
    p.add_argument("--gin_file", action="append", default=[], help="Gin file (repeatable), relative to the repository root.")
    p.add_argument("--gin_param", action="append", default=[], help="Gin binding (repeatable).")
    p.add_argument("--workdir", default="", help="Workdir on the hosts (shared by all hosts of a multi-host run).")
    p.add_argument("--entrypoint", default="train", help=f"tokenkit entrypoint ({', '.join(ENTRYPOINTS)}).")
    p.add_argument("--run_name", default="", help="Names the log directory (default: the first Gin file's stem).")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE set for the run (repeatable).")
    p.add_argument("--prepare", default="",
                   help="Shell command run on every host before each start (e.g. mounting the workdir).")
    p.add_argument("--ref", default="HEAD", help="Git ref to ship.")
    p.add_argument("--python", default="3.11", help="Python version of the hosts' venv.")
    p.add_argument("--follow", action="store_true", help="After starting (or with `logs`), tail the log.")
    p.add_argument("--lines", type=int, default=100, help="Lines of log to show.")
    p.add_argument("--fetch", default="", help="With `logs`: copy the log files into this local directory.")
    p.add_argument("--force", action="store_true", help="With `stop`: SIGKILL instead of SIGTERM.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/launch.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="Print the commands in order; run none.")
    parser.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    platforms = parser.add_subparsers(dest="platform", required=True)

    tpu = platforms.add_parser("tpu", help="Cloud TPU VMs through gcloud.")
    tpu.add_argument("action", choices=("up", "create", "setup", "run", "logs", "stop", "exec", "delete"))
    tpu.add_argument("--name", required=True, help="TPU VM name (the node id of a queued resource).")
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", default=None)
    tpu.add_argument("--accelerator_type", default="", help="e.g. v4-32 (needed to create).")
    tpu.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU runtime (software) version.")
    tpu.add_argument("--spot", action="store_true", help="Spot capacity (preemptible).")
    tpu.add_argument("--preemptible", action="store_true", help="Legacy preemptible VM (tpu-vm create only).")
    tpu.add_argument("--queued", action="store_true", help="Use a queued resource and wait until ACTIVE.")
    tpu.add_argument("--queued_resource", default="", help="Queued resource id (default NAME-qr).")
    tpu.add_argument("--recreate", action="store_true", help="Delete and recreate a preempted/failed TPU.")
    tpu.add_argument("--wait_minutes", type=float, default=120.0)
    tpu.add_argument("--poll_seconds", type=float, default=30.0)
    tpu.add_argument("--workers", default="",
                     help="Workers ('all' or 0,1,...): for `exec` (default all), `logs` (default 0).")
    tpu.add_argument("--command", default="", help="With `exec`: the command to run on the workers.")
    _experiment_flags(tpu)

    gpu = platforms.add_parser("gpu", help="GPU hosts over ssh, one process per host.")
    gpu.add_argument("action", choices=("up", "setup", "run", "logs", "stop"))
    gpu.add_argument("--hosts", required=True, help="Comma-separated ssh destinations; the first coordinates.")
    gpu.add_argument("--coordinator", default="", help="HOST:PORT of process 0 as the others reach it.")
    gpu.add_argument("--port", type=int, default=DEFAULT_PORT, help="Coordinator port on the first host.")
    gpu.add_argument("--ssh_option", action="append", default=[], help="Extra ssh/scp argument (repeatable), e.g. -i KEY.")
    _experiment_flags(gpu)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = Runner(dry_run=args.dry_run)
    try:
        if args.platform == "tpu":
            if args.action == "exec" and not args.command:
                raise LaunchError("`tpu exec` needs --command.")
            main_tpu(args, runner)
        else:
            main_gpu(args, runner)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
