import os
import signal

from tokenkit.training.preemption import PreemptionWatcher


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        assert not watcher.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.requested
        assert watcher.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
