import os
import tempfile

import pytest

import robot_env  # noqa: F401  (registers the envs)

# One torch/BLAS thread per process: the server needs the other core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Hardware servers persist a latched e-stop under $XDG_STATE_HOME: the tests' own, not the user's
# (spawned servers inherit it).
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="robot-env-test-state-")


@pytest.fixture
def no_leftover_servers():
    """Assert that a test leaves no robot-env server process of ours behind."""
    def servers():
        out = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().split(b"\0")
                with open(f"/proc/{pid}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if b"robot_env" in cmd and b"serve" in cmd and ppid == os.getpid():
                out.add(int(pid))
        return out
    before = servers()
    yield servers
    import time
    deadline = time.time() + 5
    while servers() - before and time.time() < deadline:
        time.sleep(0.05)
    assert not servers() - before, "a spawned server outlived its env"


@pytest.fixture(scope="module")
def ctx():
    """A private ZeroMQ context per test module, terminated after it."""
    import zmq
    c = zmq.Context()
    yield c
    c.term()
