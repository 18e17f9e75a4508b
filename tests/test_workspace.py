"""The workspace box and the floor hold for the gripper whatever channel moves it, along the motion,
and velocity commands lapse unless refreshed: on both simulators and through the env.

(The driver on the emulated bus runs the same `TargetController.advance`; test_hardware.py checks it there.)
"""
import gymnasium as gym
import numpy as np
import pytest

from robot_env.control.safety import SafetyConfig
from robot_env.model.description import ARM, JOINTS
from robot_env.model.kinematics import fk_frames
from simulators.kinematic import KinematicSim

CFG = SafetyConfig()
FLOOR = max(CFG.workspace_min[2], CFG.floor_height)
ARM_DOWN = np.array([0.0, 1.45, 0.0, 0.3, 0.0, 0.2, 0.0])  # gripper hanging low and close to the base
TOL = 1e-6  # m: round-off only


def excess(pos, cfg=CFG) -> float:
    lo = np.maximum(cfg.workspace_min, [-np.inf, -np.inf, cfg.floor_height])
    return float(np.maximum(lo - pos, 0).sum() + np.maximum(pos - np.asarray(cfg.workspace_max), 0).sum())


class One:
    """A KinematicSim, or robot 1 of a 3-robot batched sim: the same commands, the same checks."""

    def __init__(self, batched: bool, **kw):
        self.batched = batched
        self.seen: set = set()  # every flag any state reported since the start
        self.sim = KinematicSim(num_robots=3, **kw) if batched else KinematicSim(**kw)

    def apply(self, **cmd):
        if not self.batched:
            return self.sim.apply({k: np.asarray(v, float) if np.ndim(v) else float(v) for k, v in cmd.items()})
        return self.sim.apply({k: np.tile(np.asarray(v, float), (3, 1)) if np.ndim(v) else np.full(3, float(v))
                               for k, v in cmd.items()})

    def step(self, n=1, **cmd):
        worst = 0.0
        for _ in range(n):
            if cmd:
                self.apply(**cmd)
            self.sim.advance(0.04)
            worst = max(worst, excess(self.ee()))
            self.seen |= self.flags()
        return worst

    def st(self, key):
        v = self.sim.state()[key]
        return v[1] if self.batched else v

    def ee(self):
        return self.st("ee")[:3]

    def flags(self) -> set:
        c = self.sim.state()["clipped"]
        return {k for k, rows in c.items() if 1 in rows} if self.batched else set(c)


@pytest.fixture(params=[False, True], ids=["single", "batched"])
def sim(request):
    s = One(request.param)
    s.sim.reset(None, {})
    return s


def test_the_torso_cannot_lower_the_gripper_through_the_floor(sim):
    sim.step(100, arm_position=ARM_DOWN, torso=0.386)
    assert sim.ee()[2] > FLOOR + 0.1
    worst = sim.step(120, torso=0.0)  # the case: gripper to z = -0.19 m without this
    assert worst <= TOL
    assert sim.ee()[2] == pytest.approx(FLOOR, abs=2e-3)  # it goes as low as allowed, no lower
    assert "torso.workspace" in sim.flags()


def test_arm_velocity_cannot_drive_the_gripper_behind_the_robot_or_down(sim):
    for qdot in ([0, 1.0, 0, 0, 0, 0, 0], [0, -1.0, 0, -1.2, 0, 0, 0], [1.2, 1.4, 0, 1.5, 0, 1.5, 0]):
        sim.sim.reset(None, {})
        worst = sim.step(80, arm_velocity=qdot)
        assert worst <= TOL, qdot
        assert "arm_velocity.workspace" in sim.flags() or np.abs(sim.st("dq")[ARM]).max() < 1e-9


def test_a_joint_path_that_leaves_the_box_between_two_inside_poses_stops_at_the_boundary(sim):
    """Straight in joint space from stretched out to tucked, the gripper passes behind the base (x < 0)."""
    sim.sim.reset(None, {"initial_arm_position": np.zeros(7) if not sim.batched else np.zeros((3, 7))})
    tuck = np.array([1.32, 1.40, -0.2, 1.72, 0.0, 1.66, 0.0])
    assert excess(np.array(fk_frames(0.3, tuck.tolist())[0])) == 0.0  # the end pose itself is inside
    worst = sim.step(150, arm_position=tuck)
    assert worst <= TOL
    assert "arm_position.workspace" in sim.flags()


def test_random_commands_of_every_channel_never_leave_the_box(sim):
    rng = np.random.default_rng(11)
    vmax = np.array([j.velocity for j in JOINTS])[ARM]
    worst = 0.0
    seen = set()
    for k in range(600):
        if k % 60 == 0:
            sim.sim.reset(None, {})
        c = k // 5 % 4
        cmd = ({"arm_velocity": rng.uniform(-1.2, 1.2, 7) * vmax} if c == 0 else
               {"arm_position": rng.uniform(-2.5, 2.5, 7), "torso": float(rng.uniform(-0.1, 0.5))} if c == 1 else
               {"ee_delta": rng.uniform(-0.08, 0.08, 3), "torso": float(rng.uniform(-0.1, 0.5))} if c == 2 else
               {"arm_velocity": rng.uniform(-1, 1) * np.array([0, 1.5, 0, 1.5, 0, 0, 0]), "torso": 0.0})
        worst = max(worst, sim.step(**cmd))
        seen |= sim.flags()
    assert worst <= TOL
    assert "torso.workspace" in seen and {"arm_position.workspace", "arm_velocity.workspace"} & seen


def test_a_gripper_outside_the_box_may_move_back_in():
    sim = KinematicSim(SafetyConfig(workspace_max=(1.3, 0.9, 1.7)))
    sim.reset(None, {})
    sim.ctl.guard.hi[2] = 0.7  # the box shrinks under a gripper at z = 0.8 (as after a config change)
    for _ in range(40):
        sim.apply({"ee_delta": np.array([0.0, 0.0, -0.03])})
        sim.advance(0.04)
    assert sim.state()["ee"][2] < 0.7


def test_workspace_errors_in_reset_poses_are_refused(sim):
    from robot_env.errors import RequestError
    opts = {"initial_arm_position": ARM_DOWN, "initial_torso": 0.0}
    if sim.batched:
        opts = {k: np.tile(v, (3, 1)) if np.ndim(v) else np.full(3, v) for k, v in opts.items()}
    with pytest.raises(RequestError, match="outside the workspace"):
        sim.sim.reset(None, opts)


def test_base_twist_lapses_while_other_commands_arrive(sim):
    """The issue's case: one base_twist, then only gripper commands; Fetch's base stops when cmd_vel is
    silent for 0.25 s."""
    sim.apply(base_twist=[0.5, 0.0])
    speeds = []
    for _ in range(60):  # 2.4 s of gripper commands
        sim.step(gripper=0.05)
        speeds.append(sim.st("base")[3])
    assert max(speeds) > 0.1  # it did start
    t_stop = 0.25 + max(speeds) / 0.75 + 0.08  # lapse + braking at 0.75 m/s² + one period of each
    assert speeds[int(np.ceil(t_stop / 0.04))] == 0.0
    assert speeds[-1] == 0.0 and "base_twist.lapsed" in sim.seen


def test_refreshed_velocity_commands_do_not_lapse(sim):
    for _ in range(50):
        sim.step(base_twist=[0.5, 0.0], arm_velocity=[0.3, 0, 0, 0, 0, 0, 0])
    assert sim.st("base")[3] == pytest.approx(0.5)
    assert sim.st("dq")[1] == pytest.approx(0.3)
    assert not {"base_twist.lapsed", "arm_velocity.lapsed"} & sim.seen


def test_arm_velocity_lapses_too(sim):
    sim.apply(arm_velocity=[0.4, 0, 0, 0, 0, 0, 0])
    sim.step(30, gripper=0.02)  # 1.2 s
    assert sim.st("dq")[1] == 0.0 and "arm_velocity.lapsed" in sim.seen


def test_joint_velocity_env_stays_in_the_box():
    """The issue: the joint_velocity env left the box on 15 of 50 steps."""
    env = gym.make("robot_env/FetchReach-v0", control="joint_velocity")
    try:
        worst, outside = 0.0, 0
        for seed in range(4):
            env.reset(seed=seed)
            rng = np.random.default_rng(seed)
            bias = rng.uniform(-1, 1, 8)
            for _ in range(50):
                obs, *_ = env.step(np.clip(bias + rng.normal(0, 0.3, 8), -1, 1).astype(np.float32))
                e = excess(obs["achieved_goal"])
                worst, outside = max(worst, e), outside + (e > TOL)
        assert outside == 0 and worst <= TOL
    finally:
        env.close()
