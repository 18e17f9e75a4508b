"""The MuJoCo backend: N physical robots with a table, objects and cameras, behind the shared safety layer.

The command side is the kinematic simulator's N-robot kernel unchanged (safety layer, motion limiter,
Cartesian IK from the *measured* joints, clip flags, velocity lapses); the joints it outputs are the
servo targets of a MuJoCo plant (`plant.Plant`), and what the state reports is what the plant's
sensors read: joint positions and velocities, actuator efforts, objects (pose and velocities in the
base frame). One robot or N on one model: the same code, robot for robot.
"""
from __future__ import annotations

import numpy as np

from robot_env.backends.spec import BackendSpec, SafetyParams, ready_gripper
from robot_env.control.commands import CHANNELS, RESET_OPTIONS
from robot_env.control.safety import SafetyConfig
from robot_env.errors import RequestError
from robot_env.model.description import FETCH, HEAD

from ..kernel_backend import KernelBackend
from ..kinematic_many import ManyRobots
from ..kinematic_one import OneRobot
from .model import mjcf
from .plant import Plant
from .render import CAMERAS, Cameras, camera_specs
from .scenes import SCENES

MAX_ROBOTS = 64
MAX_DROP = 0.5  # m: the highest above its resting height an object may be placed (it falls from there)
# Where the head looks at a reset: pan 0, tilted down so the head camera sees the table.
HEAD_AT_TABLE = (0.0, 0.95)
_num = (int, float)


def _names_ok(v) -> bool:
    return isinstance(v, list) and len(set(v)) == len(v) and all(c in CAMERAS for c in v)


class _OnPlant:
    """What the two kernels share over a plant: where a reset puts each object (the backend checks
    and hands over the options first), and the robots whose simulation diverged."""

    def __init__(self, plant: Plant, scene, ready_xy, **kw):
        self.plant = plant
        self.scene = scene
        self.ready_xy = ready_xy
        self.head_default = HEAD_AT_TABLE if scene.objects else (0.0, 0.0)
        self._object_opts: dict = {}
        super().__init__(**kw)  # the kinematic kernel's (OneRobot or ManyRobots)

    def _diverged(self, robots: list) -> None:
        """MuJoCo reset these robots' data after a NaN or a blow-up: put each back at rest where the
        safety layer last commanded it (objects where they rest by default), hold it, and latch a
        `physics_unstable` fault until a reset of that robot or `reset_faults`. Only these robots:
        the others of an N-robot server go on as they were."""
        rows = sorted(int(i) for i in robots)
        self.unstable.update(rows)
        q = np.atleast_2d(self._stop_trajectory(rows))
        self.plant.reset(rows, q[rows], self._object_poses(len(rows)))
        self._hold_rows(rows)

    def _object_poses(self, n: int) -> dict:
        out = {}
        opts = self._object_opts
        for o in self.scene.objects:
            pose = np.zeros((n, 7))
            pose[:, 3] = 1.0  # wxyz identity
            pose[:, 0] = self.ready_xy[0] + 0.1  # default: 10 cm in front of the start gripper
            pose[:, 1] = self.ready_xy[1]
            pose[:, 2] = self.scene.rest_height(o)
            if f"{o.name}.xy" in opts:
                pose[:, :2] = opts[f"{o.name}.xy"]
            if f"{o.name}.pose" in opts:
                p = opts[f"{o.name}.pose"]  # x, y, z, qx, qy, qz, qw
                pose[:, :3] = p[:, :3]
                pose[:, 3] = p[:, 6]
                pose[:, 4:7] = p[:, 3:6]
            out[o.name] = pose
        return out


class PhysicsOne(_OnPlant, OneRobot):
    """`OneRobot` (plain floats) whose joints are a MuJoCo plant's: one robot's fast path."""

    def _plant_reset(self, options: dict) -> None:
        self.q[HEAD] = self.head_default
        self.ctl.target[HEAD] = self.head_default
        self.unstable = set()
        self.plant.reset([0], self.q[None], self._object_poses(1))

    def _stop_trajectory(self, rows):
        """The commanded joints, their trajectory's velocity zeroed (the robot is put back at rest there)."""
        self.v = np.zeros_like(self.v)
        return self.q

    def _hold_rows(self, rows) -> None:
        self.hold()

    def apply(self, command, robots=None):
        """A robot with a latched `physics_unstable` holds: its commands are not applied (flagged)."""
        if self.unstable:
            self.clipped = ["physics_unstable.held"]  # in the state too, as for N robots
            return self.clipped
        return OneRobot.apply(self, command, robots)

    def _plant_step(self, q0, v0, h) -> None:
        bad = self.plant.step(q0[None], v0[None], self.q[None], self.v[None], h, (self.base,))
        if bad:
            self._diverged(bad)

    def _sensed(self) -> np.ndarray:
        return self.plant.q[0].copy()

    def _sensed_velocity(self) -> np.ndarray:
        return self.plant.dq[0].copy()

    def state(self) -> dict:
        st = OneRobot.state(self)
        st["effort"] = self.plant.effort[0].copy()
        st["objects"] = self.plant.object_state_one(self.base)
        st["faults"] = _faults(self.unstable)
        fast = self.plant.overspeed()
        if fast[0]:  # a joint driven past its speed limit (by contact): said, not hidden
            st["clipped"] = {**st["clipped"], "joint.overspeed": [0]}
        return st


class PhysicsRobots(_OnPlant, ManyRobots):
    """`ManyRobots` whose joints are a MuJoCo plant's: the limiter's output drives the servos."""

    # the object options are taken out (and checked) by the backend before the kernel resets
    def _plant_reset(self, idx, options: dict) -> None:
        rows = np.arange(self.num_robots)[idx]
        self.q[idx, HEAD] = self.head_default
        self.target[idx, HEAD] = self.head_default
        self.unstable = getattr(self, "unstable", set()) - set(rows.tolist())
        self.plant.reset(rows, self.q[idx], self._object_poses(len(rows)))

    def _stop_trajectory(self, rows):
        """The commanded joints, the trajectory's velocity of robots `rows` zeroed (put back at rest there)."""
        self.v = self.v.copy()
        self.v[rows] = 0.0
        return self.q

    def _hold_rows(self, rows) -> None:
        """`hold` for some robots only (the limiter's stopping targets, velocity commands off)."""
        self.target[rows] = self.limiter.stopping_target(self.q[rows], self.v[rows], self.period)
        self.vel_mode[rows] = False
        self.vel_target[rows] = 0.0
        self.base_cmd[rows] = 0.0

    def apply(self, command, robots=None):
        """Robots with a latched `physics_unstable` hold: their rows of a command are not applied (flagged)."""
        if not self.unstable:
            return ManyRobots.apply(self, command, robots)
        held = sorted(self.unstable)
        flags = dict(ManyRobots.apply(self, command, robots))
        self._hold_rows(held)  # their targets back to where they stop: the command's rows for them void
        flags["physics_unstable.held"] = held
        self.clipped = flags
        return flags

    def _plant_step(self, q0, v0, h) -> None:
        bad = self.plant.step(q0, v0, self.q, self.v, h, self.base)
        if bad:
            self._diverged(bad)

    def _sensed(self) -> np.ndarray:
        return self.plant.q

    def _sensed_velocity(self) -> np.ndarray:
        return self.plant.dq.copy()

    def state(self) -> dict:
        st = ManyRobots.state(self)
        st["effort"] = self.plant.effort.copy()
        st["objects"] = self.plant.object_states(self.base)
        st["faults"] = _faults(self.unstable)
        st["clipped"] = _with_overspeed(st["clipped"], self.plant.overspeed())
        return st


def _with_overspeed(clipped: dict, fast: np.ndarray) -> dict:
    if not fast.any():
        return clipped
    return {**clipped, "joint.overspeed": np.flatnonzero(fast).tolist()}


def _faults(unstable: set) -> list:
    if not unstable:
        return []
    return [{"code": "physics_unstable", "robots": sorted(unstable),
             "message": f"the simulation of robot(s) {sorted(unstable)} diverged (MuJoCo reset it, or an object "
                        "was flung: too stiff a contact, a too large timestep or a non-finite value); it was put "
                        "back at rest where it was commanded and holds: reset it, or send reset_faults"}]


class MujocoSim(KernelBackend):
    """`MujocoSim(safety, control_period, num_robots=1, scene="table", ...)`: see `Settings`."""

    kind = "mujoco"
    max_robots = MAX_ROBOTS
    channels = frozenset(CHANNELS)
    Settings = {
        "num_robots": (int, 1, lambda v: 1 <= v <= MAX_ROBOTS, f"between 1 and {MAX_ROBOTS}"),
        "scene": (str, "table", lambda v: v in SCENES, f"one of {', '.join(SCENES)}"),
        "timestep": (_num, 0.002, lambda v: 1e-4 <= v <= 0.01, "between 0.0001 and 0.01 s"),
        "grip_force": (_num, 60.0, lambda v: 1 <= v <= 200, "between 1 and 200 N per finger"),
        "cameras": (list, list(CAMERAS), _names_ok, f"a list of distinct names from {', '.join(CAMERAS)}"),
        "camera_height": (int, 84, lambda v: 8 <= v <= 640, "between 8 and 640 pixels"),
        "camera_width": (int, 84, lambda v: 8 <= v <= 640, "between 8 and 640 pixels"),
        "depth": (bool, False, None, "true or false"),
        "shadows": (bool, False, None, "true or false (a shadow map costs 3-10x per frame on a CPU)"),
        "antialias": (bool, False, None, "true or false (4x multisampling: several times a frame's cost)"),
        "threads": (int, 2, lambda v: 1 <= v <= 16, "between 1 and 16"),
        "action_latency_steps": (int, 0, lambda v: 0 <= v <= 50, "between 0 and 50"),
        "observation_noise": (_num, 0.0, lambda v: 0 <= v <= 0.1, "between 0 and 0.1 (rad)"),
    }

    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04, num_robots: int = 1,
                 scene: str = "table", timestep: float = 0.002, grip_force: float = 60.0, cameras=CAMERAS,
                 camera_height: int = 84, camera_width: int = 84, depth: bool = False, shadows: bool = False,
                 antialias: bool = False, threads: int = 2, action_latency_steps: int = 0,
                 observation_noise: float = 0.0, description=FETCH):
        if not isinstance(num_robots, int) or not 1 <= num_robots <= MAX_ROBOTS:
            raise ValueError(f"num_robots must be in 1..{MAX_ROBOTS}, got {num_robots!r}")
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; known: {', '.join(SCENES)}")
        safety = safety or SafetyConfig()
        self.num_robots = num_robots
        self.description = description
        self.scene = SCENES[scene]
        ready = ready_gripper()
        self.ready_xy = ready[:2]
        xml = mjcf(self.scene, self.ready_xy, description, timestep=timestep, grip_force=grip_force,
                   shadows=shadows, antialias=antialias)
        self.xml = xml
        self.plant = Plant(xml, num_robots, threads=threads, description=description)
        m = self.plant.model
        far = float(m.vis.map.zfar * m.stat.extent)  # where MuJoCo's depth buffer ends, in metres
        self.cameras = Cameras(self.plant, camera_specs(list(cameras), camera_height, camera_width, depth, far))
        knobs = dict(safety=safety, control_period=control_period, action_latency_steps=action_latency_steps,
                     observation_noise=observation_noise, description=description)
        self.kernel = PhysicsOne(self.plant, self.scene, self.ready_xy, **knobs) if num_robots == 1 else \
            PhysicsRobots(self.plant, self.scene, self.ready_xy, num_robots=num_robots, **knobs)
        self.reset_opts = dict(RESET_OPTIONS)
        for o in self.scene.objects:
            self.reset_opts[f"{o.name}.xy"] = (2,)
            self.reset_opts[f"{o.name}.pose"] = (7,)
        self.spec = BackendSpec(kind=self.kind, num_robots=num_robots, channels=dict(CHANNELS),
                                reset_options=self.reset_opts, safety=SafetyParams.of(safety),
                                description=description,
                                objects={o.name: ("pos", "quat", "linvel", "angvel") for o in self.scene.objects},
                                cameras=self.cameras.specs, scene=scene, ready_ee=ready,
                                scene_info=self.scene.info(self.ready_xy))
        self._bind_kernel()

    def reset(self, seed, options, robots=None):
        rows = self.num_robots if robots is None else len(robots)
        objs = {}
        for o in self.scene.objects:
            if f"{o.name}.xy" in options and f"{o.name}.pose" in options:
                raise RequestError("bad_options", f"give {o.name}.xy or {o.name}.pose, not both")
            for key in (f"{o.name}.xy", f"{o.name}.pose"):
                if key in options:  # (the server has checked shapes and finiteness; direct callers too, here)
                    k = self.reset_opts[key][0]
                    try:
                        v = np.broadcast_to(np.asarray(options[key], float), (rows, k))
                    except (TypeError, ValueError):
                        raise RequestError("bad_options", f"{key} must be {k} numbers (or one row of {k} per "
                                                          f"reset robot), got {np.shape(options[key])}") from None
                    if not np.isfinite(v).all():
                        raise RequestError("bad_options", f"{key} must be finite numbers")
                    objs[key] = v
            self._check_placement(o, objs)
        kept = {k: v for k, v in options.items() if k not in objs}
        self.kernel._object_opts = objs
        try:
            return self.kernel.reset(seed, kept, robots)
        finally:
            self.kernel._object_opts = {}

    def _check_placement(self, o, objs) -> None:
        """An object must start on its table (within its edges) and, given a full pose, with a unit
        quaternion, not below the table top and at most `MAX_DROP` above where it rests (a higher one
        falls off the table or tunnels into it): else the reset is refused and nothing changes."""
        cx, cy = self.scene.table_center(self.ready_xy)
        hx, hy = self.scene.table_half
        for key in (f"{o.name}.xy", f"{o.name}.pose"):
            if key not in objs:
                continue
            v = objs[key]
            off = np.abs(v[:, :2] - (cx, cy)) > (hx, hy)
            if off.any():
                raise RequestError("bad_options", f"{key} puts {o.name} off the table (centre {cx:.3f}, {cy:.3f}, "
                                                  f"half size {hx}, {hy} m, base frame) for robot row(s) "
                                                  f"{np.flatnonzero(off.any(axis=1)).tolist()[:16]}")
            if key.endswith(".pose"):
                norm = np.linalg.norm(v[:, 3:7], axis=1)
                if (np.abs(norm - 1.0) > 1e-3).any():
                    raise RequestError("bad_options", f"{key}: the quaternion (qx, qy, qz, qw) must be a unit one")
                rest = self.scene.rest_height(o)
                if (v[:, 2] < rest - 0.005).any():
                    raise RequestError("bad_options", f"{key}: z puts {o.name} into the table "
                                                      f"(its centre rests at {rest:.4f} m)")
                if (v[:, 2] > rest + MAX_DROP).any():
                    raise RequestError("bad_options", f"{key}: z is more than {MAX_DROP} m above where {o.name} "
                                                      f"rests ({rest:.4f} m): it would not land where placed")

    @property
    def faults(self) -> list:
        return _faults(self.kernel.unstable)

    def physics_seconds(self) -> float:
        return self.plant.physics_seconds()

    def reset_faults(self, reboot=()):
        """Clear `physics_unstable`: the robots were already put back at rest, where they hold."""
        self.kernel.unstable = set()

    def render(self, cameras, robots=None) -> dict:
        """name -> (n, h, w, c) frames; names must be in the spec (the server checks them first)."""
        unknown = [c for c in cameras if c not in self.cameras.specs]
        if unknown:
            raise RequestError("bad_camera", f"unknown camera(s) {unknown}; this server has "
                                             f"{', '.join(self.cameras.specs) or 'none'}")
        return self.cameras.render(cameras, robots)

    def close(self) -> None:
        self.cameras.close()
        self.plant.close()

