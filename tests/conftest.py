import faulthandler
import os
import tempfile

import pytest

import robot_env  # noqa: F401  (registers the envs)

# One torch/BLAS thread per process: the server needs the other core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Headless MuJoCo rendering, decided before any test module imports mujoco (it picks its GL backend
# on import): the test modules that import mujoco themselves would otherwise leave it without one.
os.environ.setdefault("MUJOCO_GL", "egl")
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


def _anchor_venv(train: bool) -> str:
    """The anchor venv's python, built at its default place once (later runs reuse it in a fraction of a
    second). A build that fails fails the tests that need it, with pip's reason: never a silent skip."""
    from robot_env.apps import anchor_env
    try:
        return anchor_env.ensure(train=train)
    except anchor_env.AnchorEnvError as exc:
        why = str(exc)
    pytest.fail(f"the Gymnasium-Robotics anchor venv (`robot-env anchor-env{' --train' if train else ''}`) could "
                f"not be built, and this test needs it:\n{why}", pytrace=False)


@pytest.fixture(scope="session")
def anchor_python():
    """A Python with gymnasium-robotics and mujoco<3.12 (`robot-env anchor-env`), where Gymnasium-Robotics'
    Fetch envs run (they fail at gym.make on mujoco>=3.12, which the test interpreter may have)."""
    return _anchor_venv(train=False)


@pytest.fixture(scope="session")
def anchor_python_train(anchor_python):
    """The same venv with torch and Stable-Baselines3 too (`robot-env anchor-env --train`), for bench --train."""
    return _anchor_venv(train=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test marked `anchor` gets the anchor venv; one that asks for the venv is marked `anchor` (so `-m 'not
    anchor'` leaves out every test that needs it)."""
    for item in items:
        uses = {"anchor_python", "anchor_python_train"} & set(item.fixturenames)
        if item.get_closest_marker("anchor") is None and uses:
            item.add_marker(pytest.mark.anchor)
        elif item.get_closest_marker("anchor") is not None and not uses:
            item.fixturenames.insert(0, "anchor_python")


@pytest.fixture(scope="module")
def ctx():
    """A private ZeroMQ context per test module, terminated after it."""
    import zmq
    c = zmq.Context()
    yield c
    c.term()


_BACKSTOP_GRACE = 120.0  # seconds past a test's own timeout


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A backstop under pytest-timeout: its signal method cannot fire while the main thread waits in C code
    with SIGALRM blocked or the GIL held, and then a run would sit out CI's whole budget. faulthandler's
    watchdog is a C thread: past the test's timeout plus a grace it prints every thread's stack to the real
    stderr and exits, so a hang fails in minutes and says where it is."""
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker is not None and marker.args else item.config.getoption("timeout") or 0)
    if limit > 0:
        faulthandler.dump_traceback_later(limit + _BACKSTOP_GRACE, exit=True, file=_real_stderr(item.config))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _real_stderr(config):
    """The terminal's stderr, not pytest's capture file (whose contents an exiting process never shows)."""
    if not hasattr(config, "_robot_env_stderr"):
        capman = config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            config._robot_env_stderr = os.fdopen(os.dup(2), "w")
    return config._robot_env_stderr
