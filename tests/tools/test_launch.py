"""tools/launch.py against a fake `gcloud` (and fake `ssh` / `scp`) first on PATH.

The fakes append their argv to a log, answer `describe` from a small state file, and
run the remote command lines they are given with bash in a fake home directory (one
per host), where `~/tokenkit/venv/bin/python` is a stub that records its arguments and
environment. So the tests check both the exact gcloud / ssh commands and their order,
and that the shell scripts sent to the hosts unpack the code, install, start, tail and
stop a run as intended.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "tools" / "launch.py"

FAKE_GCLOUD = r'''
import json, os, shutil, signal, subprocess, sys
root = os.environ["FAKE_ROOT"]
argv = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(["gcloud"] + argv) + "\n")
state_file = os.path.join(root, "state.json")
state = json.load(open(state_file))
save = lambda: json.dump(state, open(state_file, "w"))
home = os.path.join(root, "home", "tpu")
flag = lambda name: next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)

def absent(what):
    sys.stderr.write(f"ERROR: (gcloud) NOT_FOUND: {what} was not found\n")
    sys.exit(1)

def remote(cmd):
    proc = subprocess.Popen(cmd, shell=True, cwd=home, env={**os.environ, "HOME": home},
                            start_new_session=True)
    try:
        sys.exit(proc.wait(timeout=3 if " -F " in cmd else None))
    except subprocess.TimeoutExpired:  # a followed log: stop after a moment
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(0)

kind, verb = argv[2], argv[3]
if kind == "tpu-vm" and verb == "describe":
    if state["vm"] is None:
        absent("node")
    print(json.dumps({"state": state["vm"], "acceleratorType": "v4-32",
                      "networkEndpoints": [{"ipAddress": f"10.0.0.{i}"} for i in range(state["workers"])]}))
elif kind == "tpu-vm" and verb == "create":
    state["vm"] = "READY"; save()
elif kind == "tpu-vm" and verb == "delete":
    state["vm"] = None; save()
elif kind == "queued-resources" and verb == "describe":
    if state["qr"] is None:
        absent("queued resource")
    print(state["qr"][0])
    if len(state["qr"]) > 1:
        state["qr"] = state["qr"][1:]; save()
elif kind == "queued-resources" and verb == "create":
    state["qr"] = ["WAITING_FOR_RESOURCES", "ACTIVE"]; state["vm"] = "READY"; save()
elif kind == "queued-resources" and verb == "delete":
    state["qr"] = None; state["vm"] = None; save()
elif kind == "tpu-vm" and verb == "ssh":
    remote(flag("--command"))
elif kind == "tpu-vm" and verb == "scp":
    src, dst = argv[4], argv[5]
    if ":" in src:
        shutil.copy(os.path.join(home, src.split(":", 1)[1]), dst)
    else:
        shutil.copy(src, os.path.join(home, dst.split(":", 1)[1]))
else:
    sys.exit(f"fake gcloud: unexpected {argv}")
'''

FAKE_SSH = r'''
import json, os, shutil, subprocess, sys
root = os.environ["FAKE_ROOT"]
prog, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps([prog] + argv) + "\n")
home_of = lambda host: os.path.join(root, "home", host.split("@")[-1])
if prog == "ssh":
    host, cmd = argv[-2], argv[-1]
    sys.exit(subprocess.call(cmd, shell=True, cwd=home_of(host), env={**os.environ, "HOME": home_of(host)}))
src, dst = argv[-2], argv[-1]
if ":" in src:
    host, path = src.split(":", 1)
    shutil.copy(os.path.join(home_of(host), path), dst)
else:
    host, path = dst.split(":", 1)
    shutil.copy(src, os.path.join(home_of(host), path))
'''

# The hosts' Python: records every call; `-m tokenkit.*` logs a line and, when asked to,
# stays alive (so that `stop` has something to stop).
STUB_PYTHON = r'''#!/bin/bash
{ printf '%s\n' "CALL $*"; env | grep '^JAX_' | sort; } >> "$HOME/python_calls.txt"
case "$2" in tokenkit.*)
  echo "training step 1 ($2)"
  if [ -n "${FAKE_SLEEP:-}" ]; then exec sleep 60; fi ;;
esac
'''


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def world(tmp_path):
    """A small git repository to ship, fake tools on PATH, and fake hosts' home dirs."""
    repo = tmp_path / "repo"
    for rel, text in {
        "experiments/exp.gin": "train.steps = 3\n",
        "gin/mesh/m.gin": "train.n_model_parallel = 4\n",
        "third_party/requirements-tpu.txt": "jax[tpu]==0.10.2\n",
        "third_party/requirements-cuda.txt": "jax[cuda13]==0.10.2\n",
        "tokenkit/__init__.py": "",
    }.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    root = tmp_path / "fake"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    _write_exe(bin_dir / "gcloud", f"#!{sys.executable}\n" + FAKE_GCLOUD)
    for name in ("ssh", "scp"):
        _write_exe(bin_dir / name, f"#!{sys.executable}\n" + FAKE_SSH)
    for host in ("tpu", "hostA", "hostB"):
        venv_bin = root / "home" / host / "tokenkit" / "venv" / "bin"
        venv_bin.mkdir(parents=True)
        _write_exe(venv_bin / "python", STUB_PYTHON)
    (root / "state.json").write_text(json.dumps({"vm": None, "workers": 4, "qr": None}))
    env = {**os.environ, "FAKE_ROOT": str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FAKE_SLEEP", None)

    class World:
        def __init__(self):
            self.repo, self.commit, self.root, self.env = repo, commit, root, env

        def launch(self, *args, env=None):
            return subprocess.run(
                [sys.executable, str(LAUNCH), "--repo", str(repo), *args],
                capture_output=True, text=True, env=env or self.env, timeout=120,
            )

        def state(self, **changes):
            state = json.loads((root / "state.json").read_text())
            state.update(changes)
            (root / "state.json").write_text(json.dumps(state))

        def calls(self):
            path = root / "calls.jsonl"
            if not path.exists():
                return []
            return [_normalise(json.loads(line)) for line in path.read_text().splitlines()]

        def home(self, host="tpu"):
            return root / "home" / host

        def python_calls(self, host="tpu", want=1):
            path = self.home(host) / "python_calls.txt"
            deadline = time.monotonic() + 10  # the run starts in the background
            while time.monotonic() < deadline:
                text = path.read_text() if path.exists() else ""
                if text.count("CALL -m tokenkit.") >= want:
                    return text
                time.sleep(0.05)
            return path.read_text() if path.exists() else ""

    yield World()
    for pid_file in root.glob("home/*/tokenkit/runs/*/pid"):  # leave no stub behind
        subprocess.run(["kill", "-KILL", "--", f"-{pid_file.read_text().strip()}"], capture_output=True)


def _normalise(argv: list[str]) -> list[str]:
    """The local archive lives in a fresh temporary directory: name it <archive>."""
    return ["<archive>" if a.endswith(".tar.gz") and os.path.isabs(a) else a for a in argv]


def _ssh_script(call: list[str]) -> str:
    (command,) = [a for a in call if a.startswith("--command=")]
    return command


def _no_command(call: list[str]) -> list[str]:
    return [a for a in call if not a.startswith("--command=")]


TPU = ["--name=tk", "--zone=us-central2-b"]
EXP = ["--gin_file=experiments/exp.gin", "--gin_file=gin/mesh/m.gin",
       "--gin_param=train.steps=2", "--gin_param=DataConfig.batch_size = 8", "--workdir=/shared/run 1"]
TRAIN_CALL = ("CALL -m tokenkit.train --gin_file=experiments/exp.gin --gin_file=gin/mesh/m.gin "
              "--gin_param=train.steps=2 --gin_param=DataConfig.batch_size = 8 --workdir=/shared/run 1")


def test_up_creates_installs_runs_and_follows_logs(world):
    proc = world.launch("tpu", "up", *TPU, "--accelerator_type=v4-32", "--spot", *EXP, "--follow")
    assert proc.returncode == 0, proc.stderr
    short = world.commit[:12]
    calls = world.calls()
    assert [_no_command(c) for c in calls] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tk", "--format=json", "--zone=us-central2-b"],
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "tk", "--accelerator-type=v4-32",
         "--version=tpu-ubuntu2204-base", "--zone=us-central2-b", "--spot"],
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tk", "--format=json", "--zone=us-central2-b"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "<archive>", f"tk:tokenkit-{short}.tar.gz",
         "--worker=all", "--zone=us-central2-b"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tk", "--worker=all", "--zone=us-central2-b"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tk", "--worker=all", "--zone=us-central2-b"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tk", "--worker=0", "--zone=us-central2-b"],
    ]
    assert "requirements-tpu.txt" in _ssh_script(calls[4])
    assert "nohup setsid" in _ssh_script(calls[5]) and "tail -n 100 -F" in _ssh_script(calls[6])
    # On the host: the shipped commit unpacked, requirements and package installed, the
    # run started with the exact arguments and JAX_NUM_PROCESSES = number of workers.
    src = world.home() / "tokenkit" / "src" / world.commit
    assert (src / "experiments" / "exp.gin").read_text() == "train.steps = 3\n"
    assert not list(world.home().glob("*.tar.gz"))
    text = world.python_calls()
    lines = text.splitlines()
    assert lines[0] == "CALL -m pip install --quiet -r third_party/requirements-tpu.txt"
    assert lines[1] == "CALL -m pip install --quiet --no-deps -e ."
    assert lines[2] == TRAIN_CALL
    assert lines[3:] == ["JAX_NUM_PROCESSES=4"]
    log = world.home() / "tokenkit" / "runs" / "exp" / "log.txt"
    assert "training step 1 (tokenkit.train)" in log.read_text()
    assert "training step 1" in proc.stdout  # the followed log


def test_up_reuses_a_ready_vm(world):
    world.state(vm="READY", workers=1)
    proc = world.launch("tpu", "up", *TPU, *EXP, "--run_name=second")
    assert proc.returncode == 0, proc.stderr
    verbs = [c[4] for c in world.calls()]
    assert verbs == ["describe", "scp", "ssh", "ssh"]
    assert "reusing TPU tk (v4-32, READY)" in proc.stdout
    text = world.python_calls()
    assert TRAIN_CALL in text and "JAX_NUM_PROCESSES" not in text  # one worker: one process
    assert (world.home() / "tokenkit" / "runs" / "second" / "log.txt").exists()


def test_preempted_vm_needs_recreate(world):
    world.state(vm="PREEMPTED")
    proc = world.launch("tpu", "up", *TPU, "--accelerator_type=v4-32", *EXP)
    assert proc.returncode == 2 and "is PREEMPTED; pass --recreate" in proc.stderr
    assert [c[4] for c in world.calls()] == ["describe"]
    proc = world.launch("tpu", "up", *TPU, "--accelerator_type=v4-32", "--recreate", *EXP)
    assert proc.returncode == 0, proc.stderr
    assert [c[4] for c in world.calls()][1:4] == ["describe", "delete", "create"]


def test_queued_resource_waits_until_active(world):
    proc = world.launch("tpu", "up", *TPU, "--queued", "--accelerator_type=v4-32", "--spot",
                        "--version=v2-alpha-tpuv5", "--poll_seconds=0", *EXP)
    assert proc.returncode == 0, proc.stderr
    calls = world.calls()
    qr_describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", "tk-qr",
                   "--format=value(state.state)", "--zone=us-central2-b"]
    assert calls[:5] == [
        qr_describe,
        ["gcloud", "compute", "tpus", "queued-resources", "create", "tk-qr", "--node-id=tk",
         "--accelerator-type=v4-32", "--runtime-version=v2-alpha-tpuv5", "--zone=us-central2-b", "--spot"],
        qr_describe,  # WAITING_FOR_RESOURCES
        qr_describe,  # ACTIVE
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tk", "--format=json", "--zone=us-central2-b"],
    ]
    assert [c[4] for c in calls[5:]] == ["scp", "ssh", "ssh"]
    assert "WAITING_FOR_RESOURCES; waiting" in proc.stdout
    assert TRAIN_CALL in world.python_calls()


def test_dry_run_prints_commands_and_runs_none(world):
    env = {**world.env, "PATH": os.pathsep.join(p for p in world.env["PATH"].split(os.pathsep)
                                                 if not p.startswith(str(world.root)))}
    proc = world.launch("--dry_run", "tpu", "up", *TPU, "--accelerator_type=v4-32", *EXP, env=env)
    assert proc.returncode == 0, proc.stderr
    assert world.calls() == []
    assert not (world.home() / "tokenkit" / "src").exists()
    printed = [line for line in proc.stdout.splitlines() if line.startswith("[dry run] ")]
    firsts = [line.split()[2:6] for line in printed]
    assert firsts == [
        ["gcloud", "compute", "tpus", "tpu-vm"],
        ["gcloud", "compute", "tpus", "tpu-vm"],
        ["git", "-C", str(world.repo), "archive"],
        ["gcloud", "compute", "tpus", "tpu-vm"],
        ["gcloud", "compute", "tpus", "tpu-vm"],
        ["gcloud", "compute", "tpus", "tpu-vm"],
    ]
    assert [line.split()[6] for line in printed if "tpus" in line] == ["describe", "create", "scp", "ssh", "ssh"]
    # Each printed line is the exact argument list, shell-quoted: it splits back into it.
    run_line = [line for line in printed if "nohup" in line][0]
    (command,) = [a for a in shlex.split(run_line[len("[dry run] "):]) if a.startswith("--command=")]
    script = shlex.split(command.split("=", 1)[1])[2]
    assert "'--gin_param=DataConfig.batch_size = 8'" in script, script


def test_logs_stop_and_delete(world):
    world.state(vm="READY", workers=2)
    world.env["FAKE_SLEEP"] = "1"
    assert world.launch("tpu", "up", *TPU, *EXP).returncode == 0
    world.python_calls()
    pid = int((world.home() / "tokenkit" / "runs" / "exp" / "pid").read_text())
    os.kill(pid, 0)  # running

    again = world.launch("tpu", "run", *TPU, *EXP)
    assert again.returncode == 2 and "already running" in again.stderr

    out = world.root / "fetched"
    proc = world.launch("tpu", "logs", *TPU, "--run_name=exp", "--fetch", str(out), "--workers=all")
    assert proc.returncode == 0, proc.stderr
    assert world.calls()[-3:] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tk", "--format=json", "--zone=us-central2-b"],
    ] + [
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "tk:tokenkit/runs/exp/log.txt",
         str(out / f"worker-{w}.log"), f"--worker={w}", "--zone=us-central2-b"] for w in (0, 1)
    ]
    assert "training step 1" in (out / "worker-1.log").read_text()
    proc = world.launch("tpu", "logs", *TPU, "--run_name=exp", "--lines=5")
    assert proc.returncode == 0 and "training step 1" in proc.stdout
    assert world.calls()[-1][6] == "--worker=0"

    proc = world.launch("tpu", "exec", *TPU, "--command=echo hi from $(hostname)")
    assert proc.returncode == 0 and "hi from" in proc.stdout
    assert world.calls()[-1][6] == "--worker=all"

    proc = world.launch("tpu", "stop", *TPU, "--gin_file=experiments/exp.gin")
    assert proc.returncode == 0, proc.stderr
    assert "signalled exp" in proc.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)

    assert world.launch("tpu", "delete", *TPU).returncode == 0
    assert world.calls()[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tk", "--quiet",
                                 "--zone=us-central2-b"]
    assert world.launch("tpu", "delete", *TPU, "--queued", "--project=p1").returncode == 0
    assert world.calls()[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "tk-qr",
                                 "--force", "--quiet", "--zone=us-central2-b", "--project=p1"]


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_gpu_hosts_one_process_each(world):
    proc = world.launch("gpu", "up", "--hosts=me@hostA,hostB", "--port=9999",
                        "--ssh_option=-o", "--ssh_option=BatchMode=yes", "--prepare=mkdir -p shared", *EXP)
    assert proc.returncode == 0, proc.stderr
    short = world.commit[:12]
    calls = world.calls()
    assert [c[:4] for c in calls] == [
        ["scp", "-o", "BatchMode=yes", "<archive>"],
        ["ssh", "-o", "BatchMode=yes", "me@hostA"],
        ["scp", "-o", "BatchMode=yes", "<archive>"],
        ["ssh", "-o", "BatchMode=yes", "hostB"],
        ["ssh", "-o", "BatchMode=yes", "me@hostA"],  # --prepare
        ["ssh", "-o", "BatchMode=yes", "hostB"],
        ["ssh", "-o", "BatchMode=yes", "me@hostA"],  # the run
        ["ssh", "-o", "BatchMode=yes", "hostB"],
    ]
    assert all((world.home(h) / "shared").is_dir() for h in ("hostA", "hostB"))
    assert calls[0][4] == f"me@hostA:tokenkit-{short}.tar.gz" and calls[2][4] == f"hostB:tokenkit-{short}.tar.gz"
    assert "requirements-cuda.txt" in calls[1][4]
    for index, host in enumerate(("hostA", "hostB")):
        text = world.python_calls(host)
        assert TRAIN_CALL in text
        assert f"JAX_COORDINATOR_ADDRESS=hostA:9999\nJAX_NUM_PROCESSES=2\nJAX_PROCESS_ID={index}" in text

    out = world.root / "gpu_logs"
    proc = world.launch("gpu", "logs", "--hosts=me@hostA,hostB", "--run_name=exp", "--fetch", str(out))
    assert proc.returncode == 0, proc.stderr
    assert world.calls()[-2:] == [["scp", "me@hostA:tokenkit/runs/exp/log.txt", str(out / "host-0.log")],
                                  ["scp", "hostB:tokenkit/runs/exp/log.txt", str(out / "host-1.log")]]
    assert "training step 1" in (out / "host-1.log").read_text()
    proc = world.launch("gpu", "stop", "--hosts=me@hostA,hostB", "--run_name=exp")
    assert proc.returncode == 0 and [c[1] for c in world.calls()[-2:]] == ["me@hostA", "hostB"]


def test_gcloud_missing_is_a_clear_error(world, tmp_path):
    only_git = tmp_path / "only_git"
    only_git.mkdir()
    (only_git / "git").symlink_to(subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip())
    proc = world.launch("tpu", "up", *TPU, "--accelerator_type=v4-32", *EXP,
                        env={**world.env, "PATH": str(only_git)})
    assert proc.returncode == 2
    assert "'gcloud' was not found on PATH" in proc.stderr and "cloud.google.com/sdk" in proc.stderr
    assert world.calls() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gin_file=experiments/missing.gin", "--workdir=/w"],
         "Gin file 'experiments/missing.gin' is not in commit"),
        (["--gin_file=experiments/exp.gin", "--gin_file=experiments/new.gin", "--workdir=/w"],
         "'experiments/new.gin' is not in commit .* \\(it exists here but is not committed\\)"),
        (["--gin_file=experiments/exp.gin", "--workdir=memory://bucket/run"], "and to gs://, s3://"),
        (["--gin_file=experiments/exp.gin", "--workdir=/w", "--entrypoint=nope"], "--entrypoint 'nope' unknown"),
        (["--gin_file=experiments/exp.gin", "--workdir=/w", "--env=NOEQUALS"], "must be NAME=VALUE"),
        (["--workdir=/w"], "at least one --gin_file"),
    ],
)
def test_bad_experiments_fail_before_any_gcloud_call(world, args, message):
    (world.repo / "experiments" / "new.gin").write_text("x = 1\n")  # exists, uncommitted
    proc = world.launch("tpu", "up", *TPU, "--accelerator_type=v4-32", *args)
    assert proc.returncode == 2
    assert re.search(message, proc.stderr), proc.stderr
    assert world.calls() == []


def test_gpu_mode_environment_initialises_jax_distributed(tmp_path):
    """The variables `gpu` sets make the entrypoint start jax.distributed across processes."""
    from tools import launch

    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = launch.build_parser().parse_args(
        ["gpu", "run", "--hosts=a,b", f"--coordinator=127.0.0.1:{port}", "--gin_file=x.gin"]
    )
    probe = textwrap.dedent("""
        import jax
        from tokenkit import entry
        assert entry.maybe_initialize_distributed()
        print("process", jax.process_index(), "of", jax.process_count())
        jax.distributed.shutdown()
    """)
    procs = []
    for index in range(2):
        env = {**os.environ, **launch.gpu_env(["a", "b"], index, args), "JAX_PLATFORMS": "cpu"}
        procs.append(subprocess.Popen([sys.executable, "-c", probe], env=env, cwd=REPO_ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o[0].strip() for o in outs] == ["process 0 of 2", "process 1 of 2"], outs
