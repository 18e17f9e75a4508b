"""Tasks as data (robot_env.tasks): the presets against Gymnasium-Robotics' own envs, the batch functions
against the one-robot fast paths, object observations and goals, and an env refusing a server that
lacks what its task needs before anything moves."""
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from robot_env.envs.goal_env import BridgeGoalEnv
from robot_env.envs.registration import ENV_IDS, make_goal_env, task_for
from robot_env.errors import ConfigError
from robot_env.model.description import NJ
from robot_env.tasks import PICK_AND_PLACE, PUSH, REACH, SLIDE, FetchTask
from robot_env.tasks.fetch import quat_to_euler

INFO = {"control_period": 0.04, "backend": "test",
        "description": {"joints": [{"velocity": 1.0 + i / 10, "upper": 0.1} for i in range(NJ)]},
        "spec": {"ready_ee": [0.6, 0.0, 0.8], "channels": {"ee_delta": [3], "gripper": []}}}


def _state(rng, n, objects=False):
    st = {"q": rng.uniform(-1, 1, (n, NJ)), "dq": rng.uniform(-1, 1, (n, NJ)), "ee": rng.uniform(-1, 1, (n, 7)),
          "ee_vel": rng.uniform(-1, 1, (n, 6))}
    if objects:
        quat = rng.normal(size=(n, 4))
        st["objects"] = {"object0": {"pos": rng.uniform(-1, 1, (n, 3)), "quat": quat / np.linalg.norm(quat, axis=1,
                                                                                                    keepdims=True),
                                     "linvel": rng.uniform(-1, 1, (n, 3)), "angvel": rng.uniform(-1, 1, (n, 3))}}
    return st


ARGS = ("has_object", "block_gripper", "target_in_the_air", "obj_range", "target_range", "distance_threshold",
        "gripper_extra_height", "reward_type", "target_offset")
# Gymnasium-Robotics' constructor arguments of its Fetch envs, read in the anchor venv: its envs' gym.make needs
# mujoco<3.12, which this interpreter need not have (robot-env's MuJoCo backend uses the current one).
GR_ARGS = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import gymnasium as gym, gymnasium_robotics
gym.register_envs(gymnasium_robotics)
out = {}
for gr_id in sys.argv[2:]:
    env = gym.make(gr_id)
    u = env.unwrapped
    plain = lambda v: v.tolist() if hasattr(v, "tolist") else v
    out[gr_id] = {name: plain(getattr(u, name)) for name in sys.argv[1].split(",")}
    out[gr_id]["max_episode_steps"] = env.spec.max_episode_steps
    out[gr_id]["observation_shape"] = list(env.observation_space["observation"].shape)
    env.close()
print(json.dumps(out))
"""
PRESETS = [(REACH, "FetchReach-v4"), (PUSH, "FetchPush-v4"), (SLIDE, "FetchSlide-v4"),
           (PICK_AND_PLACE, "FetchPickAndPlace-v4")]


@pytest.fixture(scope="module")
def gymnasium_robotics_args(anchor_python):
    from robot_env.apps.anchor_env import child_env
    proc = subprocess.run([anchor_python, "-c", GR_ARGS, ",".join(ARGS), *(gr_id for _, gr_id in PRESETS)],
                          capture_output=True, text=True, timeout=180, env=child_env(anchor_python), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.anchor
@pytest.mark.parametrize("task,gr_id", PRESETS)
def test_the_presets_are_gymnasium_robotics_arguments(task, gr_id, gymnasium_robotics_args):
    u = gymnasium_robotics_args[gr_id]
    for name in ARGS[:-1]:
        assert getattr(task, name) == u[name], (gr_id, name)
    np.testing.assert_allclose(task.target_offset, u["target_offset"])
    if task.has_object:  # longer on purpose: a joint-driven arm, not a mocap weld (tasks/fetch.py)
        assert task.max_episode_steps > u["max_episode_steps"]
    else:
        assert task.max_episode_steps == u["max_episode_steps"]
    assert u["observation_shape"] == [25 if task.has_object else 10]


def test_object_euler_angles_are_gymnasium_robotics_mat2euler():
    # In-process: Gymnasium-Robotics (the test extra) imports next to any mujoco, 4.0 included; only its
    # envs need mujoco<3.12.
    from gymnasium_robotics.utils import rotations
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    q[:5] = [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0.7071068, 0, 0.7071068], [0, 1, 0, 0], [0, 0, 1, 0]]  # edge cases
    xyzw = q / np.linalg.norm(q, axis=1, keepdims=True)
    wxyz = xyzw[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(quat_to_euler(xyzw), rotations.mat2euler(rotations.quat2mat(wxyz)), atol=1e-9)


@pytest.mark.parametrize("task", [REACH, REACH.with_(control="joint_velocity", block_gripper=False),
                                  REACH.with_(reward_type="dense")])
def test_the_one_robot_paths_are_the_batch_functions_row_for_row(task):
    b = task.bound(INFO)
    rng = np.random.default_rng(1)
    st = _state(rng, 6)
    goals = rng.uniform(-1, 1, (6, 3))
    actions = rng.uniform(-1, 1, (6, b.action_space.shape[0]))
    batch_cmd, batch_obs = b.command(actions), b.observe(st, goals)
    rewards, successes = b.compute_reward(batch_obs["achieved_goal"], goals, None), \
        b.is_success(batch_obs["achieved_goal"], goals)
    for i in range(6):
        one = {k: v[i] for k, v in st.items()}
        cmd = b.command_one(actions[i].tolist())
        assert set(cmd) == set(batch_cmd)
        for k in cmd:
            np.testing.assert_array_equal(np.asarray(cmd[k]), batch_cmd[k][i])
        obs = b.observe_one(one, goals[i])
        for k in obs:
            np.testing.assert_array_equal(obs[k], batch_obs[k][i])
        r, s = b.reward_one(obs["achieved_goal"], goals[i])
        assert (r, s) == (float(rewards[i]), float(successes[i]))


def test_the_object_observation_has_gymnasium_robotics_layout():
    b = PUSH.bound(INFO)
    rng = np.random.default_rng(2)
    st = _state(rng, 4, objects=True)
    obs = b.observe(st, np.zeros((4, 3)))
    o, ob, dt = obs["observation"], st["objects"]["object0"], 0.04
    grip, velp = st["ee"][:, :3], st["ee_vel"][:, :3] * dt
    np.testing.assert_array_equal(o[:, 0:3], grip)
    np.testing.assert_array_equal(o[:, 3:6], ob["pos"])
    np.testing.assert_array_equal(o[:, 6:9], ob["pos"] - grip)
    np.testing.assert_array_equal(o[:, 9:11], np.repeat(0.5 * st["q"][:, 8:9], 2, axis=1))
    np.testing.assert_array_equal(o[:, 11:14], quat_to_euler(ob["quat"]))
    np.testing.assert_allclose(o[:, 14:17], ob["linvel"] * dt - velp)
    np.testing.assert_allclose(o[:, 17:20], ob["angvel"] * dt)
    np.testing.assert_allclose(o[:, 20:23], velp)
    np.testing.assert_allclose(o[:, 23:25], np.repeat(0.5 * dt * st["dq"][:, 8:9], 2, axis=1))
    np.testing.assert_array_equal(obs["achieved_goal"], ob["pos"])
    assert b.observation_space["observation"].shape == (25,)
    one = b.observe_one({k: (v[0] if k != "objects" else {"object0": {f: a[0] for f, a in ob.items()}})
                         for k, v in st.items()}, np.zeros(3))
    np.testing.assert_allclose(one["observation"], o[0])


def test_objects_and_goals_are_placed_as_gymnasium_robotics_places_them():
    rng = np.random.default_rng(3)
    for task in (PUSH, PICK_AND_PLACE, SLIDE):
        b = task.bound(INFO)
        xy = b.reset_options(rng, 400)["object0.xy"]
        d = np.linalg.norm(xy - [0.6, 0.0], axis=1)
        assert (d >= 0.1).all() and (np.abs(xy - [0.6, 0.0]) <= task.obj_range).all()
        st = {"ee": np.tile([0.6, 0.0, 0.8, 0, 0, 0, 1], (400, 1)),
              "objects": {"object0": {"pos": np.tile([0.7, 0.1, 0.425], (400, 1))}}}
        goals = b.sample_goals(rng, st, np.arange(400))
        off = np.asarray(task.target_offset)
        assert (np.abs(goals[:, :2] - [0.6, 0.0] - off[:2]) <= task.target_range).all()
        lifted = goals[:, 2] > 0.425
        if task.target_in_the_air:
            assert 0.4 < lifted.mean() < 0.6 and (goals[:, 2] <= 0.425 + 0.45).all()
        else:
            assert not lifted.any() and (goals[:, 2] == 0.425).all()
    assert REACH.bound(INFO).reset_options(rng, 3) == {}


def test_a_task_names_what_a_server_lacks():
    spec = {"channels": {"ee_delta": [3], "arm_velocity": [7]}, "objects": {}, "reset_options": {}}
    missing = PICK_AND_PLACE.needs.missing(spec)
    assert any("gripper" in m for m in missing) and any("object0" in m for m in missing)
    assert any("object0.xy" in m for m in missing) and any("scene 'table'" in m for m in missing)
    assert REACH.needs.missing(spec) == []
    with pytest.raises(ConfigError, match="needs object"):
        PUSH.bind({"backend": "kinematic", "spec": spec})


def test_an_env_refuses_a_server_without_what_its_task_needs_before_anything_moves(no_leftover_servers):
    with pytest.raises(ConfigError) as info:
        BridgeGoalEnv(PUSH)  # the embedded kinematic simulator has no objects
    msg = str(info.value)
    assert "FetchPush needs" in msg and "object0" in msg and "kinematic" in msg and "Nothing was moved" in msg


def test_task_arguments_are_checked():
    with pytest.raises(ValueError, match="reward_type"):
        REACH.with_(reward_type="shaped")
    with pytest.raises(ValueError, match="control"):
        FetchTask(control="mocap")
    with pytest.raises(TypeError, match="unknown task argument"):
        task_for("robot_env/FetchReach-v0", gravity=1.0)
    with pytest.raises(ValueError, match="unknown env id"):
        task_for("robot_env/FetchReach-v9")


def test_every_id_is_registered_and_the_generic_factory_makes_its_task():
    for env_id, e in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == e.task.max_episode_steps
    env = make_goal_env("robot_env/FetchReach-v0", reward_type="dense")
    try:
        assert isinstance(env, BridgeGoalEnv) and env.task == REACH.with_(reward_type="dense")
        obs, _ = env.reset(seed=0)
        _, r, *_ = env.step(env.action_space.sample())
        assert r == pytest.approx(-np.linalg.norm(env.goal - env.bound.observe_one(env.robot_state, env.goal)
                                                  ["achieved_goal"]))
    finally:
        env.close()


def test_the_old_public_names_keep_working():
    import robot_env
    from robot_env.envs import FetchReachEnv
    from robot_env.envs.fetch_reach_vector import FetchReachVectorEnv
    assert robot_env.connect and robot_env.Robot and robot_env.MoveError
    assert issubclass(FetchReachEnv, BridgeGoalEnv)
    assert gym.spec("robot_env/FetchReach-v0").entry_point == "robot_env.envs.fetch_reach:FetchReachEnv"
    assert gym.spec("robot_env/FetchReach-v0").vector_entry_point.endswith(":FetchReachVectorEnv")
    assert "BridgeVectorEnv" in [c.__name__ for c in FetchReachVectorEnv.__mro__]
    pytest.importorskip("stable_baselines3")
    from robot_env.envs.sb3_vec_env import BridgeVecEnv, FetchReachVecEnv
    assert issubclass(FetchReachVecEnv, BridgeVecEnv)


@pytest.mark.parametrize("module", ["drivers.bus", "simulators.kinematic", "drivers.hardware", "robot_env"])
def test_the_drivers_and_simulators_import_no_gymnasium(module):
    code = f"import sys, {module}; print('gymnasium' in sys.modules, 'zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], (module, out)


def test_the_architecture_document_lists_the_one_state_schema():
    from pathlib import Path

    from robot_env.bridge.state import markdown_table
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    table = doc.split("<!-- state-table -->\n", 1)[1].split("\n<!-- /state-table -->", 1)[0]
    assert table == markdown_table()
