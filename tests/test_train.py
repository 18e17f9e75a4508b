"""`robot-env train` / `run`: a policy trained in the test on the simulator, its bundle, the checks that
keep a wrong policy off the robot, and the same policy on the hardware driver over the emulated bus."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from robot_env.apps import cli  # noqa: E402
from robot_env.training.train import BundleError, check_bundle, load_bundle, open_checked, run_policy, train  # noqa: E402
from simulators.servo_bus import EmulatorProcess  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A small policy trained here, on the embedded simulator, to 90% eval success (fixed seed: ~10k steps,
    ~40 s on a 2-core machine)."""
    out = str(tmp_path_factory.mktemp("policy") / "bundle")
    meta = train(None, steps=16_000, out=out, seed=0, eval_every=1000, eval_episodes=20, threshold=0.9,
                 log=None)
    assert meta["training"]["reached_threshold"], meta["learning_curve"]
    return out


def copy_bundle(src, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(src, dst)
    return dst


def edit_meta(path, **changes):
    mpath = os.path.join(path, "metadata.json")
    with open(mpath) as fh:
        meta = json.load(fh)
    meta.update(changes)
    with open(mpath, "w") as fh:
        json.dump(meta, fh)


@pytest.mark.timeout(180)
def test_bundle_holds_model_metadata_and_learning_curve(bundle_dir):
    assert {"policy.pt", "metadata.json", "learning_curve.png"} <= set(os.listdir(bundle_dir))
    b = load_bundle(bundle_dir)
    m = b.meta
    assert m["env_id"] == "robot_env/FetchReach-v0" and m["control"] == "ee_delta"
    assert m["control_period"] == pytest.approx(0.04) and m["action_scale"] == pytest.approx(0.05)
    assert len(m["description_hash"]) >= 16
    assert m["action_space"]["shape"] == [4] and m["observation_space"]["spaces"]["observation"]["shape"] == [10]
    t = m["training"]
    assert t["steps"] > 0 and t["wall_s"] > 0 and t["final_success"] >= 0.9
    assert m["learning_curve"][-1]["success"] == t["final_success"]
    # round trip: the loaded policy acts as the trained one
    obs = {"observation": np.linspace(0, 1, 10), "achieved_goal": np.array([0.6, 0.0, 0.8]),
           "desired_goal": np.array([0.7, 0.1, 0.7])}
    a = b.act(obs)
    assert a.shape == (4,) and np.all(np.abs(a) <= 1.0)
    np.testing.assert_array_equal(a, load_bundle(bundle_dir).act(obs))


def test_run_on_the_simulator_succeeds_and_reports_latency(bundle_dir, capsys, no_leftover_servers):
    assert cli.main(["run", "--policy", bundle_dir, "--episodes", "10"]) == 0
    out = capsys.readouterr().out
    assert "metadata matches" in out and "success rate" in out and "latency rtt" in out


def test_missing_bundle_and_missing_files_are_clear_errors(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(str(tmp_path / "nope"))
    for name in ("policy.pt", "metadata.json"):
        p = copy_bundle(bundle_dir, tmp_path / name.replace(".", "_"))
        os.remove(os.path.join(p, name))
        with pytest.raises(BundleError, match=f"has no {name}"):
            load_bundle(p)


def test_corrupt_files_are_clear_errors(bundle_dir, tmp_path):
    p = copy_bundle(bundle_dir, tmp_path / "a")
    with open(os.path.join(p, "metadata.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(BundleError, match="metadata.json is corrupt"):
        load_bundle(p)
    p = copy_bundle(bundle_dir, tmp_path / "b")
    with open(os.path.join(p, "policy.pt"), "wb") as fh:
        fh.write(b"PK\x03\x04 this is not a model")
    with pytest.raises(BundleError, match="policy.pt is corrupt"):
        load_bundle(p)
    p = copy_bundle(bundle_dir, tmp_path / "c")
    with open(os.path.join(p, "metadata.json"), "w") as fh:
        json.dump({"env_id": "robot_env/FetchReach-v0"}, fh)
    with pytest.raises(BundleError, match="lacks"):
        load_bundle(p)


def test_wrong_description_hash_is_refused_before_anything_moves(bundle_dir, tmp_path, capsys,
                                                                 no_leftover_servers):
    p = copy_bundle(bundle_dir, tmp_path)
    edit_meta(p, description_hash="0" * 64)
    with pytest.raises(BundleError, match="robot description hash") as info:
        open_checked(p)
    assert "nothing was moved" in str(info.value)
    assert cli.main(["run", "--policy", p, "--episodes", "1"]) == 2
    assert "robot description hash" in capsys.readouterr().err


def test_wrong_spaces_and_period_are_refused(bundle_dir, tmp_path, no_leftover_servers):
    import gymnasium as gym
    meta = load_bundle(bundle_dir).meta
    env = gym.make("robot_env/FetchReach-v0")
    try:
        check_bundle(meta, env)  # the real one fits
        bad = json.loads(json.dumps(meta))
        bad["observation_space"]["spaces"]["observation"]["shape"] = [11]
        with pytest.raises(BundleError, match="observation space"):
            check_bundle(bad, env)
        bad = dict(meta, action_space=dict(meta["action_space"], shape=[8]), control_period=0.02)
        with pytest.raises(BundleError, match=r"(?s)control period.*action space"):
            check_bundle(bad, env)
    finally:
        env.close()
    # weights whose shapes disagree with the metadata's spaces: refused on load
    p = copy_bundle(bundle_dir, tmp_path)
    edit_meta(p, action_space=dict(meta["action_space"], shape=[8]))
    with pytest.raises(BundleError, match="does not fit metadata.json"):
        load_bundle(p)


@pytest.mark.timeout(180)
def test_policy_trained_on_the_simulator_succeeds_on_the_driver_over_the_emulated_bus(
        bundle_dir, tmp_path, no_leftover_servers):
    """The swap by config: `robot-env run`'s code with config="fetch_dynamixel" instead of the simulator."""
    emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"))
    try:
        bundle, env = open_checked(bundle_dir, "fetch_dynamixel",
                                   {"server.dynamixel": {"serial_port": emu.path}})  # metadata check passes
        try:
            assert env.unwrapped.backend_kind == "dynamixel"
            successes, steps, secs = run_policy(bundle, env, episodes=10, seed=0)
        finally:
            env.close()
    finally:
        emu.close()
    assert np.mean(successes) >= 0.9, successes


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_train_times_both_sides_to_95_percent(tmp_path, capsys, anchor_python_train):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--train", "--json", str(out)]) == 0  # finds the anchor as a user's run would
    res = json.loads(out.read_text())
    assert res["anchor_python"] in (sys.executable, anchor_python_train), res["anchor_note"]
    assert res["ours"]["reached_threshold"] and res["anchor"]["reached_threshold"], res.get("anchor_note")
    assert res["ratio"]["wall"] > 0
    assert "ours / anchor wall-clock time to 95%" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_train_reaches_95_percent_and_runs_on_the_emulated_bus(tmp_path, no_leftover_servers):
    out = str(tmp_path / "policy")
    assert cli.main(["train", "--out", out]) == 0
    meta = load_bundle(out).meta
    assert meta["training"]["final_success"] >= 0.95 and meta["normalize"]
    emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"))
    try:
        assert cli.main(["run", "--policy", out, "--config", "fetch_dynamixel", "--serial-port", emu.path,
                         "--episodes", "10"]) == 0
    finally:
        emu.close()


class _Payload:
    """An object whose unpickling would run code (via __reduce__) if a loader allowed it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/robot_env_pwned",))


def test_a_policy_file_carrying_code_is_refused_not_run(bundle_dir, tmp_path):
    import torch
    p = copy_bundle(bundle_dir, tmp_path / "evil")
    torch.save({"actor": _Payload()}, os.path.join(p, "policy.pt"))
    if os.path.exists("/tmp/robot_env_pwned"):
        os.remove("/tmp/robot_env_pwned")
    with pytest.raises(BundleError, match="policy.pt is corrupt"):
        load_bundle(p)
    assert not os.path.exists("/tmp/robot_env_pwned")
    q = copy_bundle(bundle_dir, tmp_path / "norm")
    if load_bundle(bundle_dir).meta.get("normalize"):
        with open(os.path.join(q, "normalization.json"), "w") as fh:
            fh.write('{"clip_obs": 10}')
        with pytest.raises(BundleError, match="normalization.json is corrupt"):
            load_bundle(q)


def test_train_and_run_push_on_the_mujoco_backend_by_its_env_id(tmp_path, capsys, no_leftover_servers):
    """`train --env robot_env/FetchPush-v0` needs no --config (the id's is mujoco), takes the object
    tasks' settings, and `run` replays the bundle on the same backend."""
    out = tmp_path / "push"
    assert cli.main(["train", "--env", "robot_env/FetchPush-v0", "--steps", "1100", "--eval-every", "1100",
                     "--eval-episodes", "1", "--threshold", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["env_id"] == "robot_env/FetchPush-v0" and meta["config"] == "mujoco"
    assert meta["training"]["hyperparams"]["tau"] == 0.05 and meta["policy_kwargs"]["n_critics"] == 2
    capsys.readouterr()
    rc = cli.main(["run", "--policy", str(out), "--episodes", "1"])
    text = capsys.readouterr().out
    assert "success rate" in text and "over 1 episodes" in text
    assert rc == (0 if "success rate   100.0%" in text else 1)  # the exit status: success rate >= 90 %


def test_demonstrations_seed_the_her_buffer_with_whole_scripted_episodes(no_leftover_servers):
    """`train --demos N`: N episodes of the scripted Push agent go into the replay buffer as SB3 stores
    its own transitions (episode ends marked, so HER relabels inside them), before any learning step."""
    from robot_env.apps.scripted import for_env
    from robot_env.training.sac_her import train_loop
    from robot_env.training.train import make_env
    env_id = "robot_env/FetchPush-v0"
    model, vecnorm, result = train_loop(lambda evaluating: make_env(env_id=env_id), steps=30, eval_every=10_000,
                                        eval_episodes=1, normalize=True, demos=3, demo_agent=for_env(env_id),
                                        learning_starts=1000, buffer_size=1000, net_arch=[32, 32], n_critics=1)
    demo = result["demonstrations"]
    assert demo["episodes"] == 3 and demo["steps"] == 3 * 70
    assert demo["success"] >= 2 / 3  # the scripted agent pushes ~97 % of blocks home
    buf = model.replay_buffer
    assert buf.size() == 3 * 70 + 30  # the demonstrations, then the agent's own steps
    ends = np.flatnonzero(buf.dones[:buf.size(), 0] + buf.timeouts[:buf.size(), 0])
    assert list(ends[:3]) == [69, 139, 209]  # each demonstration ends where its episode did
    assert np.any(buf.rewards[:210, 0] == 0.0)  # some demonstration steps reached the goal
    assert vecnorm.obs_rms["observation"].count > 210  # the normalizer learned from them too
    model.env.close()
