"""`robot-env anchor-env`: the Python that runs Gymnasium-Robotics' Fetch envs, the anchor of `robot-env bench`.

Gymnasium-Robotics' Fetch envs fail at `gym.make` on mujoco >= 3.12 (from 3.12 `mjtJoint.mjJNT_SLIDE ==
np.int32(2)` is False, and an assertion in its `mujoco_utils` compares exactly that), while robot-env's own
MuJoCo backend uses the current MuJoCo (4.0). One interpreter cannot hold both, so the anchor runs in a
venv of its own: gymnasium-robotics with mujoco<3.12 and, for `bench --train`, torch and Stable-Baselines3
pinned to this Python's. The anchor children (bench_children/anchor_fetch.py, training/sac_her.py) import
nothing of robot_env, so robot-env itself is not installed there.

`ensure()` builds the venv (or reuses it when it already has what it needs) at `default_dir()`,
~/.cache/robot-env/anchor-py<major>.<minor>; `pick()` is how the benchmarks choose their anchor Python:
`--anchor-python`, else this interpreter if it can run the anchor, else the default venv if it exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import RobotEnvError
from . import bench_children

REQUIREMENTS = ["gymnasium-robotics>=1.4", "mujoco<3.12"]  # setup.py's `anchor` extra
MUJOCO_BELOW = (3, 12)
MARKER = "robot-env-anchor.json"  # written into a venv this module built, once it was checked
HINT = ("run `robot-env anchor-env` (it builds a venv with gymnasium-robotics and mujoco<3.12 where `robot-env "
        "bench` finds it), or pass --anchor-python PATH to a Python that has them")


def hint(train: bool = False) -> str:
    """What to do for an anchor Python (`train`: one for `bench --train`)."""
    return HINT.replace("`robot-env anchor-env`", "`robot-env anchor-env --train`") if train else HINT


class AnchorEnvError(RobotEnvError):
    """The anchor venv could not be built or checked; the message says why."""


def default_dir(python_version: str | None = None) -> Path:
    """Where the anchor venv for a Python of this version ('3.11', default: the running one) lives."""
    if python_version is None:
        python_version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    python_version = ".".join(python_version.split(".")[:2])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "robot-env" / f"anchor-py{python_version}"


def venv_python(directory: str | os.PathLike) -> Path:
    return Path(directory) / "bin" / "python"


def is_managed(python: str | os.PathLike) -> bool:
    """A Python of a venv this module built (its directory has our marker)."""
    return (Path(python).parent.parent / MARKER).is_file()


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def child_env(python: str | os.PathLike) -> dict | None:
    """The environment to run an anchor child with in `python`: ours without PYTHONPATH for a venv this
    module built (nothing there needs it, and a path to another site-packages could bring mujoco>=3.12
    back), else None (inherit: a Python the user named may rely on it)."""
    return _clean_env() if is_managed(python) else None


def probe(python: str | os.PathLike | None = None, timeout: float = 60.0, env: dict | None = None) -> dict:
    """The anchor packages' versions in `python` (None: this interpreter, in-process); raises
    AnchorEnvError when `python` cannot be run. `env`: default `child_env(python)`."""
    if python is None:
        from .bench_children.anchor_probe import versions
        return versions()
    try:
        proc = subprocess.run([str(python), bench_children.path("anchor_probe")], capture_output=True, text=True,
                              check=False, timeout=timeout, env=env if env is not None else child_env(python))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnchorEnvError(f"cannot run {python}: {exc}") from None
    if proc.returncode != 0:
        raise AnchorEnvError(f"{python} failed to report its packages (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-800:]}")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AnchorEnvError(f"{python} did not report its packages: {proc.stdout[-300:]!r}") from None


def _release(version: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)(?:\.(\d+))?", version or "")
    return (int(m.group(1)), int(m.group(2) or 0)) if m else ()


def lacking(found: dict, train: bool = False) -> list[str]:
    """What a probed Python lacks to run the anchor (`train`: also `bench --train`'s); [] when nothing."""
    out = []
    for module, dist in (("gymnasium", "gymnasium"), ("gymnasium_robotics", "gymnasium-robotics")):
        if not found.get(module):
            out.append(f"{dist} is not installed")
    mj = found.get("mujoco")
    if not mj:
        out.append("mujoco is not installed")
    elif not _release(mj) or _release(mj) >= MUJOCO_BELOW:
        out.append(f"it has mujoco {mj}, and Gymnasium-Robotics' Fetch envs need mujoco<3.12")
    if train:
        for module, dist in (("torch", "torch"), ("stable_baselines3", "stable-baselines3")):
            if not found.get(module):
                out.append(f"{dist} is not installed (bench --train needs it)")
    return out


def pick(explicit: str | None = None, train: bool = False) -> tuple[str | None, str | None]:
    """The Python the anchor runs in: (python, None), or (None, why there is none and what to do)."""
    if explicit:
        return explicit, None
    here = lacking(probe(), train)
    if not here:
        return sys.executable, None
    why = f"this Python ({sys.executable}) cannot run it: " + "; ".join(here)
    python = venv_python(default_dir())
    if python.exists():
        try:
            there = lacking(probe(python), train)
        except AnchorEnvError as exc:
            there = [str(exc)]
        if not there:
            return str(python), None
        how = "`robot-env anchor-env --train`" if train else "`robot-env anchor-env`"
        return None, (f"{why}. The anchor venv {python.parent.parent} is there but " + "; ".join(there)
                      + f": run {how} to bring it up to date, or pass --anchor-python PATH")
    return None, f"{why}; and there is no anchor venv at {python.parent.parent}: {hint(train)}"


# -- building ----------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"robot-env anchor-env: {msg}", file=sys.stderr, flush=True)


def _train_requirements() -> list[str]:
    """torch and Stable-Baselines3 as this Python has them: the same loop on the same versions, and torch's
    build pinned exactly (a '+cpu' label stays: pip never swaps in PyPI's multi-GB CUDA build)."""
    here = probe()
    if not here.get("torch") or here["torch"] == "unknown":
        raise AnchorEnvError("--train installs torch in the anchor venv pinned to this Python's torch, and this "
                             "Python has none: install torch first (README, Train and deploy: the CPU build), "
                             "then run `robot-env anchor-env --train` again")
    sb3 = here.get("stable_baselines3")
    return [f"torch=={here['torch']}",
            f"stable-baselines3=={sb3}" if sb3 and sb3 != "unknown" else "stable-baselines3>=2.3"]


@contextlib.contextmanager
def _locked(directory: Path):
    """One build of a directory at a time (a test run and a user's `anchor-env` may race)."""
    import fcntl
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another build of {directory} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                  check=False)
        except OSError as exc:
            raise AnchorEnvError(f"{what} failed: {exc}") from None
        if proc.returncode != 0:
            out.seek(0)
            lines = [ln for ln in out.read().decode(errors="replace").splitlines() if ln.strip()
                     and "is ignored: it is neither a file nor a directory" not in ln]
            tail = "\n".join("    " + ln for ln in lines[-15:]) or "    (no output)"
            raise AnchorEnvError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure(directory: str | os.PathLike | None = None, train: bool = False, python: str | None = None) -> str:
    """The anchor venv's Python: reused when it already has what it needs, else built (or brought up to date)
    in `directory` (default `default_dir()` for `python`'s version) from `python` (default: this one)."""
    base = python or sys.executable
    if directory is None:
        directory = default_dir(probe(base)["python"] if python else None)
    directory = Path(directory).expanduser().absolute()
    vpy = venv_python(directory)
    env = _clean_env()
    with _locked(directory):
        create = not vpy.exists()
        if not create:
            try:
                missing = lacking(probe(vpy, env=env), train)
            except AnchorEnvError as exc:
                if not (directory / MARKER).exists():
                    raise AnchorEnvError(f"{directory} is a venv this command did not build, and {exc}: remove "
                                         "it or pick another --dir") from None
                missing, create = [str(exc)], True
            if not missing:
                _log(f"reusing {directory}")
                return str(vpy)
            _log(f"{directory} needs work: " + "; ".join(missing))
        elif directory.exists() and any(directory.iterdir()) and not (directory / "pyvenv.cfg").exists():
            raise AnchorEnvError(f"{directory} exists and is not a venv: pick another --dir (or empty it)")
        reqs = REQUIREMENTS + (_train_requirements() if train else [])
        t0 = time.monotonic()
        if create:
            _log(f"creating a venv at {directory} from {base} ...")
            (directory / MARKER).unlink(missing_ok=True)
            _run([base, "-m", "venv", "--clear", str(directory)], "creating the venv")
        _log(f"installing {' '.join(reqs)} ...")
        _run([str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
             "pip install in the anchor venv", env=env)
        found = probe(vpy, env=env)
        missing = lacking(found, train)
        if missing:
            raise AnchorEnvError(f"the anchor venv {directory} was built but " + "; ".join(missing))
        seconds = time.monotonic() - t0
        (directory / MARKER).write_text(json.dumps({
            "built_by": "robot-env anchor-env", "requirements": reqs, "found": found, "train": train,
            "seconds": round(seconds, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        _log(f"ready in {seconds:.0f} s: gymnasium-robotics {found['gymnasium_robotics']}, mujoco {found['mujoco']}"
             + (f", torch {found['torch']}, stable-baselines3 {found['stable_baselines3']}" if train else ""))
        return str(vpy)


def run_anchor_env_cli(args) -> int:
    try:
        python = ensure(args.dir, train=args.train, python=args.python)
    except AnchorEnvError as exc:
        print(f"robot-env: error: {exc}", file=sys.stderr)
        return 2
    print(python)
    return 0
