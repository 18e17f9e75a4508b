"""A plain (non-editable) wheel holds every module and the shipped configs, and works on its own:
built from this checkout, installed into a folder, then used from outside the checkout."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def test_a_wheel_install_works_outside_the_checkout(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("robot_env-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("robot_env", "drivers", "simulators"):
        for src in (ROOT / pkg).rglob("*.py"):
            rel = src.relative_to(ROOT).as_posix()
            assert rel in names, f"{rel} is missing from the wheel"
    for toml in (ROOT / "robot_env" / "configs").glob("*.toml"):
        assert f"robot_env/configs/{toml.name}" in names
    for page in ("index.html", "app.js", "style.css"):  # `robot-env web` serves them from the package
        assert f"robot_env/apps/web/static/{page}" in names
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    code = ("import robot_env, gymnasium as gym, numpy as np\n"
            "assert robot_env.__file__.startswith(%r), robot_env.__file__\n"
            "env = gym.make('robot_env/FetchReach-v0')\n"
            "obs, _ = env.reset(seed=0)\n"
            "obs, r, *_ = env.step(np.zeros(4, np.float32))\n"
            "env.close()\n"
            "print('ok', obs['observation'].shape)\n") % str(target)
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok (10,)", run.stderr[-3000:]


def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run runs the README's test command as written (the mujoco extra, not the anchor one: the anchor has
    its own venv), torch first."""
    readme = (ROOT / "README.md").read_text()
    command = readme.split("Run the tests:\n\n```bash\n", 1)[1].split("\n```", 1)[0]
    assert command == 'pip install torch==2.13.0 && pip install -e ".[test,mujoco,train,ray,lerobot,cameras,web,view]" && python -m pytest'
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
