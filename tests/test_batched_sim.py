"""The batched simulator is N single simulators: batched kinematics against the scalar ones, the
batched backend against N `KinematicSim`s fed the same commands, and the batched server's refusals."""
import numpy as np
import pytest

from robot_env import config as config_mod
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.errors import ServerError
from robot_env.model.description import ARM, JOINTS, NJ
from robot_env.model.kinematics import DOWN, fk_frames, jacobian_array, limited_step, orientation_error, rot_to_quat
from robot_env.model.kinematics_batch import (
    fk_frames_batch,
    jacobian_batch,
    limited_step_batch,
    orientation_error_batch,
    rot_to_quat_batch,
)
from simulators.kinematic import KinematicSim

LO = np.array([j.lower for j in JOINTS[ARM]])
HI = np.array([j.upper for j in JOINTS[ARM]])


def test_batched_kinematics_match_the_scalar_functions():
    rng = np.random.default_rng(7)
    n = 300
    q = rng.uniform(LO, HI, (n, 7))
    torso = rng.uniform(0.0, 0.386, n)
    err = rng.normal(0.0, 0.3, (n, 6))  # large: many robots hit a joint limit and take the second solve
    pos, rot, origins, axes = fk_frames_batch(torso, q)
    jac = jacobian_batch(pos, origins, axes)
    rot_rows = np.stack(rot, axis=-1)
    new = limited_step_batch(q, jac, err, LO, HI)
    oe = orientation_error_batch(rot_rows, np.tile(DOWN, (n, 1)))
    quat = rot_to_quat_batch(rot_rows)
    at_limit = ((new == LO) | (new == HI)).any(axis=1).sum()
    non_positive_trace = (rot_rows[:, 0] + rot_rows[:, 4] + rot_rows[:, 8] <= 0).sum()
    assert at_limit > 20 and non_positive_trace > 20  # both second paths exercised
    for i in range(n):
        p1, r1, o1, a1 = fk_frames(float(torso[i]), q[i].tolist())
        assert np.array([x[i] for x in pos]) == pytest.approx(p1, abs=1e-12)
        assert rot_rows[i] == pytest.approx(r1, abs=1e-12)
        j1 = jacobian_array(p1, o1, a1)
        np.testing.assert_allclose(jac[i], j1, atol=1e-12)
        np.testing.assert_allclose(new[i], limited_step(q[i], j1, err[i], LO, HI), atol=1e-9)
        np.testing.assert_allclose(oe[i], orientation_error(r1, DOWN), atol=1e-12)
        np.testing.assert_allclose(quat[i], rot_to_quat(r1), atol=1e-12)


def _flags_by_robot(flags: dict, n: int) -> list[set]:
    out = [set() for _ in range(n)]
    for name, robots in flags.items():
        for r in robots:
            out[r].add(name)
    return out


@pytest.mark.parametrize("knobs", [{}, {"action_latency_steps": 2}])
def test_batched_sim_steps_exactly_like_n_single_sims(knobs):
    """Random commands of every channel, some for a subset of robots, partial resets: same joints,
    velocities, targets, gripper pose, base odometry and clipped flags as N independent KinematicSims."""
    n = 5
    rng = np.random.default_rng(3)
    batch = KinematicSim(num_robots=n, **knobs)
    singles = [KinematicSim(**knobs) for _ in range(n)]
    batch.reset(None, {})
    for s in singles:
        s.reset(None, {})
    vmax = batch.limiter.vel[ARM]
    motion_flags: set = set()
    for k in range(160):
        kind = k // 20 % 4
        robots = np.sort(rng.choice(n, size=3, replace=False)) if k % 3 == 0 else None
        rows = n if robots is None else 3
        if kind == 0:
            cmd = {"ee_delta": rng.uniform(-0.08, 0.08, (rows, 3))}  # beyond max_ee_step at times
        elif kind == 1:
            cmd = {"arm_velocity": rng.uniform(-1.5, 1.5, (rows, 7)) * vmax, "head": rng.uniform(-2, 2, (rows, 2))}
        elif kind == 2:
            cmd = {"arm_position": rng.uniform(LO - 0.3, HI + 0.3, (rows, 7)), "torso": rng.uniform(-0.1, 0.5, rows)}
        else:
            cmd = {"ee_delta": rng.uniform(-0.05, 0.05, (rows, 3)), "gripper": rng.uniform(-0.02, 0.12, rows),
                   "base_twist": rng.uniform(-2, 2, (rows, 2))}
        bflags = batch.apply(cmd, robots)
        for row, i in enumerate(range(n) if robots is None else robots):
            single_cmd = {c: (float(v[row]) if v.ndim == 1 else v[row]) for c, v in cmd.items()}
            singles[i].apply(single_cmd)
        batch.advance(0.04)
        for s in singles:
            s.advance(0.04)
        if k % 37 == 36:  # a partial reset
            who = np.array([1, 3])
            batch.reset(None, {}, who)
            for i in who:
                singles[i].reset(None, {})
        st = batch.state()
        for i, s in enumerate(singles):
            ss = s.state()
            for key in ("q", "dq", "target", "ee", "ee_vel", "base"):
                np.testing.assert_allclose(st[key][i], ss[key], atol=1e-9, err_msg=f"step {k} robot {i} {key}")
        if not knobs and k % 37 != 36:  # flags of the command just applied (with latency: of an older one)
            got = _flags_by_robot(bflags, n)
            in_state = _flags_by_robot(st["clipped"], n)  # plus what the guard and the lapses raised since
            for i in (range(n) if robots is None else robots):
                assert got[i] == set(singles[i].clipped), (k, i)
                assert in_state[i] == set(singles[i].state()["clipped"]), (k, i)
                motion_flags |= in_state[i] - got[i]
    if not knobs:
        assert motion_flags, "the workspace guard never acted: the comparison did not cover it"


def _batch_server(n: int) -> ServerProcess:
    cfg = config_mod.load("sim", {"server.kinematic": {"num_robots": n}})
    return ServerProcess(cfg)


def test_batched_server_refuses_bad_requests_and_keeps_serving(no_leftover_servers):
    n = 4
    srv = _batch_server(n)
    try:
        with RobotClient(srv.endpoint, timeout=5.0) as c:
            info = c.hello()
            assert info["num_robots"] == n and info["backend"] == "kinematic"
            st0 = c.reset(seed=1)
            assert st0["q"].shape == (n, NJ) and st0["ee"].shape == (n, 7)
            bad = [
                ({"ee_delta": np.zeros((n - 1, 3))}, "one row per robot"),
                ({"ee_delta": np.zeros((n, 2))}, "shape"),
                ({"ee_delta": np.full((n, 3), np.nan)}, "non-finite"),
                ({"ee_delta": np.array([[0.0, np.inf, 0.0]] * n)}, "non-finite"),
                ({"ee_delta": [[0.0, 0.0], [0.0]] + [[0.0, 0.0, 0.0]] * (n - 2)}, "ragged"),
                ({"ee_delta": np.zeros((n, 3), dtype=bool)}, "numbers"),
                ({"ee_delta": "fast"}, "array"),
                ({"teleport": np.zeros((n, 3))}, "unknown command channel"),
                ({"ee_delta": np.zeros((n, 3)), "arm_velocity": np.zeros((n, 7))}, "cannot be combined"),
                ({"robots": [0, 0], "gripper": [0.05, 0.05]}, "distinct"),
                ({"robots": [0, n], "gripper": [0.05, 0.05]}, "in 0\\.\\."),
                ({"robots": [True], "gripper": [0.05]}, "robot indices"),
                ({"robots": [2**64 - 1], "gripper": [0.05]}, "robot indices"),
                ({"gripper": [0.05] * (n - 1) + [True]}, "got a bool"),
                ({"robots": [1, 2], "gripper": [0.05, 0.05, 0.05]}, "one row per robot"),
            ]
            before = c.state()
            for cmd, words in bad:
                with pytest.raises(ServerError, match=words):
                    c.step(cmd)
            with pytest.raises(ServerError, match="robots"):
                c.reset(options={"robots": [5]})
            with pytest.raises(ServerError, match="one row per|shape"):
                c.reset(options={"robots": [0, 1], "initial_arm_position": np.zeros((3, 7))})
            after = c.state()
            assert after["time"] == before["time"]
            np.testing.assert_array_equal(after["q"], before["q"])
            np.testing.assert_array_equal(after["target"], before["target"])
            # still serving: a good batched step moves only the commanded robots
            st = c.step({"robots": [2], "ee_delta": [[0.0, 0.0, 0.03]]})
            moved = np.abs(st["q"] - before["q"]).max(axis=1) > 1e-6
            assert moved.tolist() == [False, False, True, False]
            st = c.reset(options={"robots": [2]})
            np.testing.assert_allclose(st["q"], before["q"], atol=1e-12)
    finally:
        srv.close()


def test_a_partial_reset_resamples_only_the_reset_robots():
    """With observation noise, robots that keep running keep the sample they were observed with."""
    sim = KinematicSim(num_robots=4, observation_noise=0.01)
    sim.reset(5, {})
    sim.apply({"ee_delta": np.full((4, 3), 0.02)})
    sim.advance(0.04)
    before = sim.state()
    sim.reset(None, {}, np.array([1]))
    after = sim.state()
    keep = [0, 2, 3]
    np.testing.assert_array_equal(after["q"][keep], before["q"][keep])
    np.testing.assert_array_equal(after["ee"][keep], before["ee"][keep])
    assert not np.array_equal(after["q"][1], before["q"][1])


@pytest.mark.parametrize("make", [lambda: KinematicSim(observation_noise=0.01),
                                  lambda: KinematicSim(num_robots=2, observation_noise=0.01)])
def test_a_refused_reset_does_not_reseed(make):
    sim = make()
    sim.reset(1, {})
    state = sim.rng.bit_generator.state
    with pytest.raises(Exception, match="outside the joint limits"):
        sim.reset(123, {"initial_torso": 5.0} if sim.num_robots == 1 else {"initial_torso": np.full(2, 5.0)})
    assert sim.rng.bit_generator.state == state


def test_num_robots_is_capped_where_a_reply_still_fits(no_leftover_servers):
    from robot_env.errors import ConfigError
    with pytest.raises(ConfigError, match="num_robots"):
        config_mod.load("sim", {"server.kinematic": {"num_robots": 513}})
    srv = _batch_server(512)
    try:
        with RobotClient(srv.endpoint, timeout=10.0) as c:
            c.hello()
            st = c.step({"ee_delta": np.zeros((512, 3))})
            assert st["q"].shape == (512, NJ)
    finally:
        srv.close()
