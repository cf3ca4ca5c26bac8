"""tools/multiprocess.py: N local JAX processes joined by jax.distributed."""

import signal
import sys

import pytest

from tools import multiprocess

# Each process initialises jax.distributed as every entrypoint does, then sums its
# process index over all devices with a collective. The result goes to a file of its own:
# in the log, the distributed runtime's messages on stderr can land inside the line.
PROBE = """
import os
from tokenkit import entry
entry.maybe_initialize_distributed()
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
total = multihost_utils.process_allgather(np.int32(jax.process_index())).sum()
with open(os.path.join(os.environ["PROBE_DIR"], f"probe-{jax.process_index()}"), "w") as f:
    print("probe", jax.process_index(), jax.process_count(), jax.local_device_count(),
          jax.device_count(), int(total), file=f)
"""


def test_environment_of_a_process_keeps_other_xla_flags():
    env = multiprocess.process_environment(
        1, 3, 4, 1234, base={"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8",
                             "PYTHONPATH": "/x"})
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", "1")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["PYTHONPATH"].split(":") == [str(multiprocess.REPO), "/x"]
    with pytest.raises(ValueError, match="num_processes"):
        multiprocess.start(["true"], num_processes=0)


@pytest.mark.slow
def test_processes_see_each_other_and_their_own_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    results = multiprocess.run([sys.executable, "-c", PROBE], num_processes=2,
                               devices_per_process=3, log_dir=tmp_path, timeout=300)
    multiprocess.check(results)
    for r in results:
        line = (tmp_path / f"probe-{r.process_id}").read_text()
        assert line.split()[1:] == [str(r.process_id), "2", "3", "6", "1"]
        assert r.log_file == tmp_path / f"process-{r.process_id}.log"


def test_a_failure_is_reported_and_takes_the_others_down(tmp_path):
    # Process 1 fails at once; process 0 would wait forever (as in a collective).
    code = ("import os, time\n"
            "if os.environ['JAX_PROCESS_ID'] == '1': raise SystemExit(3)\n"
            "time.sleep(600)\n")
    group = multiprocess.start([sys.executable, "-c", code], log_dir=tmp_path)
    results = group.wait(120, grace_s=1)
    assert [r.returncode for r in results] == [-signal.SIGKILL, 3]
    with pytest.raises(AssertionError, match="process 1 exited 3"):
        multiprocess.check(results)


def test_command_line_returns_the_first_failure(tmp_path):
    code = "import os, sys; sys.exit(int(os.environ['JAX_PROCESS_ID']) * 5)"
    assert multiprocess.main(["--processes=2", f"--log_dir={tmp_path}", "--",
                              sys.executable, "-c", code]) == 5
    assert multiprocess.main(["--processes=2", f"--log_dir={tmp_path}", "--", "true"]) == 0
