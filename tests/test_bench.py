"""`robot-env bench` runs end to end and writes consistent numbers, with its Gymnasium-Robotics anchor run in
the anchor venv (tests/conftest.py builds it once); without an anchor Python it says how to get one."""
import json
import math
import subprocess
import sys

import pytest

from robot_env.apps import anchor_env
from robot_env.apps.bench import anchor_id, run_bench
from robot_env.apps.bench_children import path as child_path


def _check_latency(summary: dict, names=("rtt", "bridge", "action_to_obs")):
    for name in names:
        s = summary[name]
        assert s["n"] > 0, name
        assert s["p50_ms"] > 0 and math.isfinite(s["p50_ms"]), name
        assert s["p99_ms"] >= s["p50_ms"], name


def _check_split(res: dict, physics: bool) -> None:
    """The timed row's parts: every request of the run reached the server, each part took time, the
    backend's calls lie inside the server's requests, and MuJoCo's timer (a physics backend's only) inside
    those calls; the parts add up to the client's wall time per step."""
    sp = res["split"]
    assert sp["steps"] == res["ipc"]["steps"] + 300 and sp["requests"] > sp["steps"]
    assert sp["client_and_transport_us"] > 0 and sp["server_loop_us"] > 0 and sp["backend_us"] > 0
    if physics:
        assert 0 < sp["physics_us"] < sp["backend_us"] and sp["control_us"] > 0
        total = sp["client_and_transport_us"] + sp["server_loop_us"] + sp["control_us"] + sp["physics_us"]
    else:
        assert sp["physics_us"] is None and sp["control_us"] is None
        total = sp["client_and_transport_us"] + sp["server_loop_us"] + sp["backend_us"]
    assert total == pytest.approx(sp["step_us"], rel=1e-9)


def test_bench_writes_json(tmp_path, capsys, anchor_python):
    out = tmp_path / "b.json"
    assert run_bench(steps=300, anchor=True, out=out) == 0  # the anchor Python found as a user's would be
    res = json.loads(out.read_text())
    text = capsys.readouterr().out

    for key in ("ipc", "tcp", "noop"):
        assert res[key]["steps"] == 300
        assert res[key]["steps_per_s"] > 0
        _check_latency(res[key]["latency"])
    assert res["ipc"]["endpoint"].startswith("ipc://")
    assert res["tcp"]["endpoint"].startswith("tcp://127.0.0.1:")

    z = res["zmq_echo"]
    assert z["round_trips_per_s"] > 0
    assert z["request_bytes"] > 0 and z["reply_bytes"] > 0
    assert z["rtt"]["p99_ms"] >= z["rtt"]["p50_ms"] > 0

    _check_split(res, physics=False)
    assert "where a step goes (µs, means)" in text and "backend " in text

    assert "| robot-env ipc |" in text and "| robot-env tcp |" in text and "no-op backend" in text
    assert "bare zmq round trip" in text and "FetchReach-v4 in-process (anchor)" in text

    anchor = res["anchor"]
    assert anchor is not None, res["anchor_note"]
    assert res["anchor_python"] in (sys.executable, anchor_python) and res["anchor_note"] is None
    assert anchor["env"] == res["anchor_id"] == "FetchReach-v4" and anchor["steps"] == 300
    assert anchor["steps_per_s"] > 0 and anchor_env._release(anchor["mujoco"]) < (3, 12)
    ratio = res["ratio_vs_anchor"]
    assert ratio["ipc"] == pytest.approx(res["ipc"]["steps_per_s"] / anchor["steps_per_s"], rel=1e-9)
    assert ratio["tcp"] == pytest.approx(res["tcp"]["steps_per_s"] / anchor["steps_per_s"], rel=1e-9)
    assert ratio["noop"] == pytest.approx(res["noop"]["steps_per_s"] / anchor["steps_per_s"], rel=1e-9)


def test_bench_anchor_missing_is_a_note(tmp_path, capsys):
    """A Python that cannot run the anchor gives a clear note and no ratio, not a failure."""
    out = tmp_path / "b.json"
    assert run_bench(steps=50, anchor_python=str(tmp_path / "no-such-python"), out=out) == 0
    res = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert res["anchor"] is None and res["ratio_vs_anchor"] is None
    assert "mujoco<3.12" in text and "--anchor-python" in text and "robot-env anchor-env" in text


def test_the_anchor_is_gymnasium_robotics_env_of_the_same_task(monkeypatch):
    from robot_env.envs import registration
    from robot_env.tasks import PICK_AND_PLACE, PUSH, SLIDE
    assert anchor_id("robot_env/FetchReach-v0") == "FetchReach-v4"
    for task in (PUSH, SLIDE, PICK_AND_PLACE):  # ids the registry does not have yet: the mapping is the task's name
        monkeypatch.setitem(registration.ENV_IDS, f"robot_env/{task.name}-v0", registration.EnvEntry(task))
    assert [anchor_id(f"robot_env/{n}-v0") for n in ("FetchPush", "FetchSlide", "FetchPickAndPlace")] == \
        ["FetchPush-v4", "FetchSlide-v4", "FetchPickAndPlace-v4"]
    with pytest.raises(ValueError, match="unknown env id"):
        anchor_id("robot_env/NoSuchTask-v0")


@pytest.mark.parametrize("gr_id", ["FetchPush-v4"])
def test_the_anchor_child_runs_other_fetch_envs(gr_id, anchor_python):
    """The child takes any Fetch env id: the same random actions, warm-up and resets as for FetchReach."""
    proc = subprocess.run([anchor_python, child_path("anchor_fetch"), gr_id, "200", "20", "0"], capture_output=True,
                          text=True, timeout=120, env=anchor_env.child_env(anchor_python), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["env"] == gr_id and res["steps"] == 200 and res["steps_per_s"] > 0
    assert 0 < res["physics_seconds"] < res["seconds"]
    assert anchor_env._release(res["mujoco"]) < (3, 12) and res["executable"] == anchor_python


def test_bench_vector_measures_both_rows_in_one_run(tmp_path, capsys, no_leftover_servers):
    from robot_env.apps.bench_vector import run_bench_vector
    out = tmp_path / "v.json"
    assert run_bench_vector(num_envs=6, steps=60, singles=3, warmup=10, out=out) == 0
    res = json.loads(out.read_text())
    text = capsys.readouterr().out
    b, s = res["batched"], res["singles_row"]
    assert (b["num_envs"], b["servers"]) == (6, 1) and (s["num_envs"], s["servers"]) == (3, 3)
    for r in (b, s):
        assert r["vector_steps"] == 60
        assert r["robot_steps_per_s"] == pytest.approx(r["num_envs"] * 60 / r["seconds"], rel=1e-9)
        assert r["server_rss_mb"] > 5 and r["startup_s"] > 0
        assert r["rtt"]["n"] >= 60 and r["rtt"]["p99_ms"] >= r["rtt"]["p50_ms"] > 0
    assert res["ratio"] == pytest.approx(b["robot_steps_per_s"] / s["robot_steps_per_s"], rel=1e-9)
    assert "batched server, N = 6" in text and "3 single-env servers" in text


def test_bench_push_runs_on_mujoco_against_fetchpush_v4(tmp_path, capsys, anchor_python):
    """An object task benches on its own config (mujoco) with a no-op backend that reports objects,
    against Gymnasium-Robotics' FetchPush-v4 in the anchor venv, all rows in one run."""
    out = tmp_path / "push.json"
    assert run_bench(steps=200, anchor=True, out=out, env_id="robot_env/FetchPush-v0") == 0
    res = json.loads(out.read_text())
    assert res["env"] == "robot_env/FetchPush-v0" and res["anchor_id"] == "FetchPush-v4"
    assert res["backend"].startswith("mujoco")
    assert res["anchor"]["steps_per_s"] > 0
    for key in ("ipc", "tcp", "noop"):
        assert res[key]["steps"] == 200 and res[key]["steps_per_s"] > 0
        assert res["ratio_vs_anchor"][key] == pytest.approx(res[key]["steps_per_s"] / res["anchor"]["steps_per_s"])
    _check_split(res, physics=True)
    a = res["anchor"]
    assert 0 < a["physics_seconds"] < a["seconds"]  # MuJoCo's timer, summed over the anchor's episodes
    text = capsys.readouterr().out
    assert "FetchPush-v4 in-process (anchor)" in text and "MuJoCo mj_step" in text and "1.5x its speed" in text


def test_bench_runs_the_config_it_is_given(tmp_path):
    """`--config`: the rows run the server that config describes (here a 20 ms control period), and the
    JSON says which config it was; a config that does not load is a clear error before anything starts."""
    cfg = tmp_path / "fast.toml"
    cfg.write_text('[server]\nbackend = "kinematic"\ncontrol_period = 0.02\n')
    out = tmp_path / "b.json"
    run = [sys.executable, "-m", "robot_env", "bench", "--steps", "50", "--no-anchor", "--json", str(out)]
    proc = subprocess.run([*run, "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["config"] == str(cfg) and res["ipc"]["control_period"] == 0.02
    assert f"config {cfg}" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\ncontrol_period = "fast"\n')
    proc = subprocess.run([*run, "--config", str(bad)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "control_period" in proc.stderr and "Traceback" not in proc.stderr
