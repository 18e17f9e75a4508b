"""`robot-env anchor-env` and how the benchmarks pick their anchor Python: `--anchor-python`, this interpreter
if it can run Gymnasium-Robotics' Fetch envs (gymnasium-robotics, mujoco<3.12), the default anchor venv if it
is there; otherwise a note saying to run `robot-env anchor-env`."""
import json
import os
import subprocess
import sys

from robot_env.apps import anchor_env, cli

GOOD = {"gymnasium": "1.4.0", "gymnasium_robotics": "1.4.2", "mujoco": "3.11.0", "numpy": "2.4.6",
        "torch": None, "stable_baselines3": None}
TRAIN = dict(GOOD, torch="2.13.0+cpu", stable_baselines3="2.9.2")
MUJOCO_4 = dict(GOOD, mujoco="4.0.0")


def _fake(monkeypatch, tmp_path, here, venv=None):
    """This interpreter reports `here`; the default anchor venv (under tmp_path) exists reporting `venv`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    python = anchor_env.venv_python(anchor_env.default_dir())
    if venv is not None:
        python.parent.mkdir(parents=True)
        python.touch()

    def probe(p=None, timeout=60.0, env=None):
        if p is None:
            return here
        assert str(p) == str(python)
        return venv
    monkeypatch.setattr(anchor_env, "probe", probe)
    return str(python)


def test_what_a_python_lacks_for_the_anchor():
    assert anchor_env.lacking(GOOD) == []
    assert anchor_env.lacking(dict(GOOD, mujoco="3.12.0")) == [
        "it has mujoco 3.12.0, and Gymnasium-Robotics' Fetch envs need mujoco<3.12"]
    assert any("mujoco 4.0.0" in w for w in anchor_env.lacking(MUJOCO_4))
    assert anchor_env.lacking(dict(GOOD, gymnasium_robotics=None)) == ["gymnasium-robotics is not installed"]
    assert [w.split()[0] for w in anchor_env.lacking(GOOD, train=True)] == ["torch", "stable-baselines3"]
    assert anchor_env.lacking(TRAIN, train=True) == []


def test_the_default_anchor_venv_is_per_python_version_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert anchor_env.default_dir("3.12.1") == tmp_path / "robot-env" / "anchor-py3.12"
    assert anchor_env.default_dir().name == f"anchor-py{sys.version_info[0]}.{sys.version_info[1]}"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(anchor_env.default_dir()).startswith(os.path.expanduser("~/.cache/robot-env/"))


def test_the_anchor_python_is_picked_in_order(monkeypatch, tmp_path):
    _fake(monkeypatch, tmp_path, here=GOOD, venv=GOOD)
    assert anchor_env.pick("/some/python") == ("/some/python", None)  # --anchor-python first, unchecked
    assert anchor_env.pick() == (sys.executable, None)  # this interpreter can run it
    _fake(monkeypatch, tmp_path / "b", here=MUJOCO_4, venv=GOOD)
    assert anchor_env.pick() == (anchor_env.venv_python(anchor_env.default_dir()).as_posix(), None)


def test_without_an_anchor_python_the_note_says_to_run_anchor_env(monkeypatch, tmp_path):
    _fake(monkeypatch, tmp_path, here=MUJOCO_4)
    python, note = anchor_env.pick()
    assert python is None
    assert "mujoco 4.0.0" in note and "mujoco<3.12" in note and "--anchor-python" in note
    assert "run `robot-env anchor-env`" in note and str(anchor_env.default_dir()) in note
    # bench --train also needs torch and SB3 there: a venv without them is named, with the flag that adds them
    _fake(monkeypatch, tmp_path / "b", here=MUJOCO_4, venv=GOOD)
    python, note = anchor_env.pick(train=True)
    assert python is None and "torch is not installed" in note and "`robot-env anchor-env --train`" in note
    _fake(monkeypatch, tmp_path / "c", here=MUJOCO_4, venv=TRAIN)
    assert anchor_env.pick(train=True)[0] is not None


def test_bench_without_an_anchor_python_runs_and_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    from robot_env.apps.bench import run_bench
    _fake(monkeypatch, tmp_path, here=MUJOCO_4)
    out = tmp_path / "b.json"
    assert run_bench(steps=30, out=out) == 0
    res = json.loads(out.read_text())
    assert res["anchor"] is None and res["anchor_python"] is None and res["ratio_vs_anchor"] is None
    assert "robot-env anchor-env" in res["anchor_note"]
    text = capsys.readouterr().out
    assert "FetchReach-v4 in-process (anchor) | not run" in text and "run `robot-env anchor-env`" in text


def test_anchor_env_refuses_a_directory_that_is_not_a_venv(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("not a venv")
    assert cli.main(["anchor-env", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr()
    assert "is not a venv" in err.err and err.out == ""
    assert (tmp_path / "mine.txt").read_text() == "not a venv"


def test_anchor_env_reuses_a_good_venv_and_prints_only_its_python(anchor_python, capsys):
    """The session's anchor venv is at the default place: `robot-env anchor-env` finds it good and prints
    its python (the one line on stdout, for `--anchor-python "$(robot-env anchor-env)"`), building nothing."""
    assert anchor_env.is_managed(anchor_python)
    assert cli.main(["anchor-env"]) == 0
    out = capsys.readouterr()
    assert out.out == anchor_python + "\n" and "reusing" in out.err
    marker = json.loads((anchor_env.default_dir() / anchor_env.MARKER).read_text())
    assert anchor_env.lacking(marker["found"]) == [] and "mujoco<3.12" in marker["requirements"]
    # what it reports about itself, and what the anchor children will import there
    found = anchor_env.probe(anchor_python)
    assert found["executable"] == anchor_python and anchor_env.lacking(found) == []
    code = "import gymnasium_robotics, mujoco, sys; print(mujoco.__version__, 'robot_env' in sys.modules)"
    run = subprocess.run([anchor_python, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                         env=anchor_env.child_env(anchor_python))
    assert run.returncode == 0 and run.stdout.split()[1] == "False", run.stderr[-2000:]
