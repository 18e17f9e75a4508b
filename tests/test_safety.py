"""The safety layer and the kinematic simulator: no command, however wild, moves a joint past its limits."""
import numpy as np
import pytest

from robot_env.control.safety import MotionLimiter, SafetyConfig
from robot_env.model.description import ARM, FETCH, NJ, motion_profile
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


def _reference_step(lim, q, v, target, vel_target, vel_mode, dt, speed_scale=1.0):
    """The limiter as first written (numpy, one op per line of math): the optimized step must match it bit for bit."""
    acc3 = np.concatenate([lim.acc] * 3)
    adt3, k8, inv_dt, lim_dv = acc3 * dt, 8.0 / (acc3 * dt * dt), 1.0 / dt, lim.acc * dt
    vmax = lim.vel * speed_scale
    err = target - q
    d = np.maximum(np.concatenate((np.abs(err), q - lim.lower, lim.upper - q), axis=-1), 0.0)
    n = np.floor((np.sqrt(1.0 + k8 * d) - 1.0) * 0.5)
    brake = (d * inv_dt + adt3 * n * (n + 1.0) * 0.5) / (n + 1.0)
    to_target, brake_lo, brake_hi = brake[..., :NJ], -brake[..., NJ:2 * NJ], brake[..., 2 * NJ:]
    allowed = np.minimum(vmax, to_target) + 1e-12
    scale = allowed / np.maximum(d[..., :NJ] * inv_dt + 1e-12, allowed)
    scale[..., ARM] = scale[..., ARM].min(axis=-1, keepdims=True)
    v_des = err * inv_dt * scale
    if np.any(vel_mode):
        v_des = np.where(vel_mode, np.clip(vel_target, -vmax, vmax), v_des)
    dv = np.clip(v_des, brake_lo, brake_hi) - v
    k = np.minimum(1.0, lim_dv / np.maximum(np.abs(dv), 1e-12))
    k[..., ARM] = k[..., ARM].min(axis=-1, keepdims=True)
    v_new = np.clip(v + dv * k, np.maximum(brake_lo, v - lim_dv), np.minimum(brake_hi, v + lim_dv))
    return np.clip(q + v_new * dt, lim.lower, lim.upper), v_new


@pytest.mark.parametrize("profile", ["default", "moveit"])
def test_limiter_matches_reference_single_and_batched(profile):
    """One robot (NJ,) or a batch (N, NJ): the same bits as the reference, row by row.

    Starts partly outside the limits (hardware may wake up there), mixes position and velocity
    mode, per-row speed scales and several periods (the realtime clock's uneven ones included).
    """
    lim = MotionLimiter(profile=profile)
    rng = np.random.default_rng(42)
    n = 32
    vel = np.array(motion_profile(profile).velocity)
    q = rng.uniform(LO - 0.05, HI + 0.05, (n, NJ))
    v = rng.uniform(-1, 1, (n, NJ)) * vel
    for i in range(60):
        target = rng.uniform(LO - 0.5, HI + 0.5, (n, NJ))
        vel_target = rng.uniform(-3, 3, (n, NJ)) * vel
        mode = rng.random((n, NJ)) < (0.0 if i % 3 == 0 else 0.4)
        dt = (0.04, 0.005, 0.0371 + 1e-3 * i)[i % 3]
        scale = 1.0 if i % 2 else 1.0 - 0.3 * rng.random((n, NJ))
        qb, vb = lim.step(q, v, target, vel_target, mode, dt, scale)
        qr, vr = _reference_step(lim, q, v, target, vel_target, mode, dt, scale)
        np.testing.assert_array_equal(qb, qr)
        np.testing.assert_array_equal(vb, vr)
        for r in (0, 7, n - 1):
            s_r = scale if np.isscalar(scale) else scale[r]
            q1, v1 = lim.step(q[r], v[r], target[r], vel_target[r], mode[r], dt, s_r)
            q2, v2 = _reference_step(lim, q[r], v[r], target[r], vel_target[r], mode[r], dt, s_r)
            np.testing.assert_array_equal(q1, q2)
            np.testing.assert_array_equal(v1, v2)
            np.testing.assert_array_equal(q1, qb[r])  # a row alone steps as it does in the batch
            np.testing.assert_array_equal(v1, vb[r])
        assert np.all(qb >= LO) and np.all(qb <= HI)
        q, v = qb, vb


def test_limiter_constant_cache_is_bounded():
    """The realtime clock advances by uneven wall-clock periods: the per-period cache must not grow without bound."""
    lim = MotionLimiter()
    q, v = (LO + HI) / 2, np.zeros(NJ)
    for i in range(1000):
        q, v = lim.step(q, v, HI, np.zeros(NJ), np.zeros(NJ, bool), 0.01 + 1e-6 * i)
    assert len(lim._cache) <= 8


def _reference_limited_step(q, jac, err, lower, upper, damping=0.05, orientation_weight=0.5):
    """The limit-aware IK step as first written (list Jacobian, np.linalg.solve): the reference."""
    def dls(jac):
        J = np.array(jac, dtype=float)
        e = np.array(err, dtype=float)
        J[3:] *= orientation_weight
        e[3:] *= orientation_weight
        A = J @ J.T
        A[np.diag_indices(6)] += damping * damping
        return J.T @ np.linalg.solve(A, e)

    new = q + dls(jac)
    out = (new < lower) | (new > upper)
    if out.any():
        new = q + dls([[0.0 if out[i] else v for i, v in enumerate(row)] for row in jac])
    return np.clip(new, lower, upper)


def test_ik_step_matches_reference_and_stays_in_limits():
    """Cartesian steps (near and at the joint limits too) agree with the reference to round-off and never leave the limits."""
    from robot_env.model.kinematics import fk_frames, jacobian, limited_step

    rng = np.random.default_rng(5)
    lo, hi = LO[ARM], HI[ARM]
    froze = 0
    for i in range(300):
        q = rng.uniform(lo, hi)
        if i % 3 == 0:  # some joints right at a limit
            at = rng.random(7) < 0.3
            q[at] = np.where(rng.random(at.sum()) < 0.5, lo[at], hi[at])
        pos, rot, origins, axes = fk_frames(0.2, q.tolist())
        err = tuple(rng.normal(0, 0.05, 6))
        jac = jacobian(pos, origins, axes)
        ref = _reference_limited_step(q, jac, err, lo, hi)
        new = limited_step(q, np.array(jac), err, lo, hi)
        np.testing.assert_allclose(new, ref, rtol=0, atol=1e-12)
        assert np.all(new >= lo) and np.all(new <= hi)
        froze += bool(((new == lo) | (new == hi)).any())
    assert froze > 30  # the limit path ran


def test_ee_delta_flags_match_reference_clipping():
    """max_step, workspace, floor and joint_limit flags for Cartesian deltas, as the reference clipping decides."""
    sim = KinematicSim(SafetyConfig(workspace_max=(0.75, 0.9, 1.7)))
    sim.reset(0, {})
    rng = np.random.default_rng(9)
    m = SafetyConfig().max_ee_step
    seen = set()
    for i in range(400):
        delta = rng.uniform(-0.1, 0.1, 3) if i % 4 else np.array([0.0, 0.0, -0.1])
        kin = sim.kin
        flags = sim.apply({"ee_delta": delta})
        clipped = np.clip(delta, -m, m)
        assert ("ee_delta.max_step" in flags) == (not np.array_equal(clipped, delta))
        goal = np.array(kin.pos) + clipped
        ws = np.clip(goal, sim.ctl.ws_lo, sim.ctl.ws_hi)
        assert ("ee_delta.workspace" in flags) == (not np.array_equal(ws, goal))
        assert ("ee_delta.floor" in flags) == (ws[2] < SafetyConfig().floor_height)
        tgt = sim.ctl.target[ARM]
        assert ("ee_delta.joint_limit" in flags) == bool(((tgt == LO[ARM]) | (tgt == HI[ARM])).any())
        seen.update(flags)
        sim.advance(0.04)
    assert {"ee_delta.max_step", "ee_delta.workspace", "ee_delta.joint_limit"} <= seen
