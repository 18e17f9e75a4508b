"""`robot-env bench` runs end to end and writes consistent numbers (the anchor may be unavailable)."""
import json
import math

import pytest

from robot_env.apps.bench import run_bench


def _check_latency(summary: dict, names=("rtt", "bridge", "action_to_obs")):
    for name in names:
        s = summary[name]
        assert s["n"] > 0, name
        assert s["p50_ms"] > 0 and math.isfinite(s["p50_ms"]), name
        assert s["p99_ms"] >= s["p50_ms"], name


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert run_bench(steps=300, anchor=True, out=out) == 0
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

    assert "| robot-env ipc |" in text and "| robot-env tcp |" in text and "no-op backend" in text
    assert "bare zmq round trip" in text and "FetchReach-v4 in-process (anchor)" in text

    anchor = res["anchor"]
    if anchor is None:
        assert res["anchor_note"]
        assert res["ratio_vs_anchor"] is None
        assert "anchor not run" in text
    else:
        assert anchor["steps_per_s"] > 0
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
    assert "mujoco<3.12" in text and "--anchor-python" in text


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
