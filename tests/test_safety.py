"""The safety layer and the kinematic simulator: no command, however wild, moves a joint past its limits."""
import numpy as np
import pytest

from robot_env.description import ARM, FETCH, NJ, motion_profile
from robot_env.safety import MotionLimiter, SafetyConfig
from simulators.kinematic import KinematicSim

LO, HI = FETCH.lower, FETCH.upper


def test_limiter_respects_position_velocity_acceleration_limits():
    lim = MotionLimiter()
    rng = np.random.default_rng(0)
    q = (LO + HI) / 2
    v = np.zeros(NJ)
    prof = motion_profile()
    dt = 0.04
    for _ in range(2000):
        target = rng.uniform(LO - 1, HI + 1)
        vel = rng.uniform(-10, 10, NJ)
        mode = rng.random(NJ) < 0.5
        q2, v2 = lim.step(q, v, target, vel, mode, dt)
        assert np.all(q2 >= LO) and np.all(q2 <= HI)
        assert np.all(np.abs(v2) <= np.array(prof.velocity) + 1e-9)
        assert np.all(np.abs(v2 - v) <= np.array(prof.acceleration) * dt + 1e-9)
        q, v = q2, v2


def test_limiter_reaches_target_and_stops():
    lim = MotionLimiter()
    q = np.zeros(NJ)
    q[0] = 0.1
    v = np.zeros(NJ)
    target = q.copy()
    target[ARM] = [0.5, 0.3, -0.5, 1.0, 0.2, -0.4, 0.1]
    for _ in range(200):
        q, v = lim.step(q, v, target, np.zeros(NJ), np.zeros(NJ, bool), 0.04)
    np.testing.assert_allclose(q, target, atol=1e-9)
    np.testing.assert_allclose(v, 0, atol=1e-9)


def test_velocity_mode_brakes_before_limits():
    lim = MotionLimiter()
    q = np.zeros(NJ)
    v = np.zeros(NJ)
    vel = np.zeros(NJ)
    vel[1] = 10.0  # shoulder pan, far beyond its 1.256 rad/s
    mode = np.zeros(NJ, bool)
    mode[1] = True
    for _ in range(200):
        q, v = lim.step(q, v, q, vel, mode, 0.04)
        assert q[1] <= HI[1]
    assert q[1] == pytest.approx(HI[1], abs=0.05) and abs(v[1]) < 1e-9


def test_sim_clips_wild_commands_and_flags_them():
    sim = KinematicSim()
    rng = np.random.default_rng(1)
    flags_seen = set()
    for i in range(500):
        kind = i % 4
        if kind == 0:
            cmd = {"arm_position": rng.uniform(-10, 10, 7), "torso": float(rng.uniform(-1, 2))}
        elif kind == 1:
            cmd = {"arm_velocity": rng.uniform(-20, 20, 7), "head": rng.uniform(-5, 5, 2)}
        elif kind == 2:
            cmd = {"ee_delta": rng.uniform(-1, 1, 3), "gripper": float(rng.uniform(-1, 1))}
        else:
            cmd = {"base_twist": rng.uniform(-10, 10, 2)}
        flags_seen.update(sim.apply(cmd))
        sim.advance(0.04)
        st = sim.state()
        assert np.all(st["q"] >= LO - 1e-12) and np.all(st["q"] <= HI + 1e-12)
        assert st["ee"][2] >= SafetyConfig().floor_height - 0.02
    assert {"arm_position.position_limit", "arm_position.max_step", "arm_velocity.velocity_limit",
            "ee_delta.max_step", "torso.position_limit", "head.position_limit",
            "gripper.position_limit", "base_twist.velocity_limit"} <= flags_seen


def test_workspace_and_floor_clip_cartesian_targets():
    sim = KinematicSim(SafetyConfig(workspace_max=(0.65, 0.9, 1.7)))
    flags = set()
    for _ in range(60):
        flags.update(sim.apply({"ee_delta": np.array([0.05, 0, -0.05])}))
        sim.advance(0.04)
    st = sim.state()
    assert st["ee"][0] <= 0.65 + 0.01
    assert "ee_delta.workspace" in flags


def test_hold_stops_the_arm_without_a_jump():
    sim = KinematicSim()
    for _ in range(10):
        sim.apply({"arm_velocity": np.full(7, 1.0)})
        sim.advance(0.04)
    v_before = sim.v.copy()
    sim.hold()
    prev = sim.v.copy()
    for _ in range(20):
        sim.advance(0.04)
        assert np.all(np.abs(sim.v - prev) <= np.array(motion_profile().acceleration) * 0.04 + 1e-9)
        prev = sim.v.copy()
    assert np.abs(v_before).max() > 0.5 and np.abs(sim.v).max() < 1e-9


def test_sim_to_real_knobs_are_seeded():
    def run(seed):
        sim = KinematicSim(action_latency_steps=2, observation_noise=0.01, speed_randomization=0.3)
        sim.reset(seed, {})
        out = []
        for _ in range(10):
            sim.apply({"ee_delta": np.array([0.03, 0.0, 0.0])})
            sim.advance(0.04)
            out.append(sim.state()["q"].copy())
        return np.array(out)

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_action_latency_delays_commands():
    sim = KinematicSim(action_latency_steps=2)
    sim.reset(0, {})
    q0 = sim.state()["q"].copy()
    cmd = {"arm_velocity": np.full(7, 0.5)}
    sim.apply(cmd)
    sim.advance(0.04)
    np.testing.assert_array_equal(sim.state()["q"], q0)  # first period: nothing yet
    sim.apply(cmd)
    sim.advance(0.04)
    sim.apply(cmd)
    sim.advance(0.04)
    assert np.abs(sim.state()["q"] - q0).max() > 0
