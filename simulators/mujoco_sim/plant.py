"""N robots' physics on one MuJoCo model: one `MjData` per robot, stepped along the limiter's trajectory.

Each control period the command side (the shared motion limiter and safety layer) moves the joint
targets from (q0, v0) to (q1, v1); the plant's servos track that trajectory each substep, sampled as
the cubic Hermite through its ends (exact for the limiter's constant-acceleration ramps). N robots are
stepped in threads (MuJoCo releases the GIL inside `mj_step`), chunked over both cores.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np

from robot_env.model.description import FETCH, GRIPPER, NJ

OVERSPEED = 1.1  # x the joint's speed limit: above it the state flags `joint.overspeed`
FLUNG = 20.0  # m/s: an object faster than this was flung by a contact blow-up MuJoCo did not warn of
FOLLOWING_MARGIN = 0.016  # s of travel at full speed a goal may lead by (the steady lag is ~3 ms of it)
_DIVERGED = [int(w) for w in (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQVEL,
                               mujoco.mjtWarning.mjWARN_BADQPOS)]
_STEP_TIMER = int(mujoco.mjtTimer.mjTIMER_STEP)
# Joint index (description order) -> its actuator; the gripper is the two fingers.
_ACTUATED = [i for i in range(NJ) if i != GRIPPER]


class Plant:
    def __init__(self, xml: str, num_robots: int, threads: int = 2, description=FETCH):
        self.model = m = mujoco.MjModel.from_xml_string(xml)
        self.datas = [mujoco.MjData(m) for _ in range(num_robots)]
        self.n = num_robots
        names = description.names
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, names[i]) for i in _ACTUATED]
        fid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"{s}_gripper_finger_joint") for s in "lr"]
        self.qadr = np.array([int(m.jnt_qposadr[j]) for j in jid])
        self.vadr = np.array([int(m.jnt_dofadr[j]) for j in jid])
        self.fq = np.array([int(m.jnt_qposadr[j]) for j in fid])
        self.fv = np.array([int(m.jnt_dofadr[j]) for j in fid])
        act = {mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_ACTUATOR, a): a for a in range(m.nu)}
        self.a_pos = np.array([act[names[i]] for i in _ACTUATED])
        self.a_vel = np.array([act[names[i] + "_vel"] for i in _ACTUATED])
        self.a_ff = np.array([act[names[i] + "_ff"] for i in _ACTUATED])
        self._full = np.zeros((m.nv, m.nv))
        self._ix = np.ix_(self.vadr, self.vadr)
        self._full_m4 = not hasattr(mujoco.MjData, "qM")
        self.a_fing = np.array([act[f"{s}_gripper_finger"] for s in "lr"])
        self.objects = {}  # name -> (qpos adr, dof adr) of its free joint
        for j in range(m.njnt):
            if int(m.jnt_type[j]) == int(mujoco.mjtJoint.mjJNT_FREE):  # int(): pybind11 3 enums (mujoco >= 3.12)
                self.objects[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)] = (int(m.jnt_qposadr[j]),
                                                                                   int(m.jnt_dofadr[j]))
        self._obj_lin = np.array([v + k for _, v in self.objects.values() for k in range(3)], dtype=int)
        self.threads = max(1, min(int(threads), num_robots))
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._bases = {}
        self._leads = {}
        self.vmax = np.array([j.velocity for j in description.joints])
        self._view = None  # the scratch data frames are rendered from
        self._warned = [0] * num_robots
        self.t_ctrl = self.t_phys = 0.0  # the trajectory's clock and the physics' (whole substeps)
        self._physics_done = 0.0  # s inside mj_step before the last resets (mj_resetData zeroes the timer)
        self._base_set = [None] * num_robots
        self._glide = [None] * num_robots  # a moving base's mocap pose at each substep of this period
        # sensor reads: the actuated joints then the two fingers, mapped to description order by one product
        self.qread = np.concatenate([self.qadr, self.fq])
        self.vread = np.concatenate([self.vadr, self.fv])
        k = len(_ACTUATED)
        self._gather_q = np.zeros((k + 2, NJ))
        self._gather_q[np.arange(k), _ACTUATED] = 1.0
        self._gather_q[k:, GRIPPER] = 1.0
        self._gather_e = self._gather_q.copy()
        self._gather_e[k:, GRIPPER] = 0.5
        # joint targets (description order) -> actuator controls: the servo's position, its velocity
        # feed-forward, and each finger's half of the width
        self.map_q = np.zeros((NJ, m.nu))
        self.map_v = np.zeros((NJ, m.nu))
        self.map_q[_ACTUATED, self.a_pos] = 1.0
        self.map_v[_ACTUATED, self.a_vel] = 1.0
        self.map_q[GRIPPER, self.a_fing] = 0.5
        self.q = np.zeros((num_robots, NJ))
        self.dq = np.zeros((num_robots, NJ))
        self.effort = np.zeros((num_robots, NJ))
        self._x = np.zeros((num_robots, 4, NJ))
        self._vlim = OVERSPEED * self.vmax
        for d in self.datas:
            mujoco.mj_forward(m, d)

    # -- episodes ------------------------------------------------------------------------------
    def reset(self, rows, q: np.ndarray, objects: dict) -> None:
        """Put robots `rows` at joint positions q (len(rows), NJ), at rest, with the base at the origin;
        `objects`: name -> (len(rows), 7) poses (x, y, z, qw, qx, qy, qz) in the world (= base) frame."""
        m = self.model
        if len(rows) == self.n:  # every robot starts over: so do the clocks
            self.t_ctrl = self.t_phys = 0.0
        for k, i in enumerate(rows):
            d = self.datas[i]
            self._physics_done += d.timer[_STEP_TIMER].duration
            mujoco.mj_resetData(m, d)  # (clears its warnings and timers too)
            self._warned[i] = 0
            self._base_set[i] = (0.0, 0.0, 0.0)
            d.qpos[self.qadr] = q[k, _ACTUATED]
            d.qpos[self.fq] = 0.5 * q[k, GRIPPER]
            for name, poses in objects.items():
                a, _ = self.objects[name]
                d.qpos[a:a + 7] = poses[k]
            d.ctrl[self.a_pos] = q[k, _ACTUATED]  # servos hold the pose (mj_resetData zeroed the rest)
            d.ctrl[self.a_fing] = 0.5 * q[k, GRIPPER]
            d.mocap_pos[0] = (0.0, 0.0, 0.0)
            d.mocap_quat[0] = (1.0, 0.0, 0.0, 0.0)
            mujoco.mj_forward(m, d)
        self._read(rows)

    # -- stepping --------------------------------------------------------------------------------
    def _basis(self, h: float):
        """(Bq, Bv, Ba) for the substeps that end within this control period: targets = Bq @ X,
        velocities = Bv @ X and accelerations = Ba @ X for X = [q0, h·v0, q1, h·v1]. Physics runs
        whole substeps and keeps its own clock, so a period that is not a multiple of the timestep
        (the realtime clock's) is sampled where the substeps fall, and any remainder carries over."""
        ts = self.model.opt.timestep
        lag = self.t_ctrl - self.t_phys  # physics time behind the trajectory's start, in [0, ts)
        n = int((h + lag) / ts + 1e-9)
        key = (n, h, round(lag / ts, 6))
        b = self._bases.get(key)
        if b is None:
            s = (np.arange(1, n + 1) * ts - lag) / h  # where each substep ends, as a fraction of the period
            bq = np.stack([2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2], 1)
            bv = np.stack([6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s], 1) / h
            ba = np.stack([12 * s - 6, 6 * s - 4, 6 - 12 * s, 6 * s - 2], 1) / (h * h)
            if len(self._bases) > 256:  # realtime periods vary: keep the cache small
                self._bases.clear()
            b = self._bases[key] = (bq, bv, ba)
        self.t_ctrl += h
        self.t_phys += n * ts
        return b

    def step(self, q0, v0, q1, v1, h: float, base: np.ndarray) -> None:
        """Advance every robot by h along its trajectory (rows of (N, NJ) arrays); `base` (N, 5) is
        where the odometry put each robot."""
        bq, bv, ba = self._basis(h)
        x = self._x  # (N, 4, NJ): filled in place (np.stack of four rows cost more than the rest of this)
        x[:, 0] = q0
        np.multiply(v0, h, out=x[:, 1])
        x[:, 2] = q1
        np.multiply(v1, h, out=x[:, 3])
        # The servos' profile velocity (Dynamixel's): a goal never leads the measured joint by more than
        # the joint can travel by then plus a following margin, so a joint held back (pressed on the
        # table) does not wind up and then snap past its speed limit when let go.
        lead = self._lead(len(bq), h)
        q = self.q[:, None]
        qt = np.minimum(np.maximum(np.matmul(bq, x), q - lead), q + lead)  # np.clip's values, less dispatch
        ctrl = np.matmul(qt, self.map_q) + np.matmul(np.matmul(bv, x), self.map_v)  # (N, n, nu)
        moving = (v0 != v1).any(axis=1)  # accelerating somewhere in the period (else no inertia term)
        for i, d in enumerate(self.datas):
            if moving[i]:  # inertia feed-forward M(q)·q̈ along the trajectory, substep by substep
                acc = np.matmul(ba, x[i][:, _ACTUATED])  # (n, k) joint accelerations
                ctrl[i][:, self.a_ff] = acc @ self._mass_of(d)
            row = base[i]
            pose = (row[0], row[1], row[2])
            last = self._base_set[i]
            if pose != last:  # the base moved: glide it there substep by substep (a jump drags the arm)
                self._base_set[i] = pose
                s = np.arange(1, len(bq) + 1)[:, None] / len(bq)
                th = last[2] + s[:, 0] * math.remainder(pose[2] - last[2], math.tau)
                xy = np.asarray(last[:2]) + s * (np.asarray(pose[:2]) - last[:2])
                self._glide[i] = (np.column_stack([xy, np.zeros(len(s))]),
                                  np.column_stack([np.cos(0.5 * th), np.zeros((len(s), 2)), np.sin(0.5 * th)]))
            else:
                self._glide[i] = None
        if self.pool is None:
            self._run(range(self.n), ctrl)
        else:
            chunks = np.array_split(np.arange(self.n), self.threads)
            for f in [self.pool.submit(self._run, c, ctrl) for c in chunks]:
                f.result()
        self._read(range(self.n))
        return self._unstable()

    def physics_seconds(self) -> float:
        """CPU seconds spent inside `mj_step` so far, every robot's (MuJoCo's own timer): what
        `robot-env bench` sets apart from the Python around the physics."""
        return self._physics_done + sum(d.timer[_STEP_TIMER].duration for d in self.datas)

    def overspeed(self) -> np.ndarray:
        """(N,) bool: a joint measured beyond 110 % of its speed limit (contact forced it: servo
        goals never ask for more), the state's `joint.overspeed` flag."""
        return (np.abs(self.dq) > self._vlim).any(axis=1)

    def _unstable(self) -> list:
        """Robots whose simulation diverged in this step: MuJoCo warned of a NaN/huge position, velocity
        or acceleration and reset that robot's data (it is no longer where the state says), or an object
        moves faster than `FLUNG` (a too stiff grasp for the timestep pumps energy in below MuJoCo's own
        thresholds: a 4 kg block held at 4 ms flew hundreds of metres without a warning)."""
        out = []
        lin = self._obj_lin
        for i, d in enumerate(self.datas):
            count = int(d.warning.number[_DIVERGED].sum())
            if count != self._warned[i]:
                self._warned[i] = count
                out.append(i)
            elif lin.size and np.abs(d.qvel[lin]).max() > FLUNG:
                out.append(i)
        return out

    def _lead(self, n: int, h: float) -> np.ndarray:
        """(n, NJ): how far each substep's goal may lead the joint measured at the period's start."""
        key = (n, h)
        lead = self._leads.get(key)
        if lead is None:
            ts = self.model.opt.timestep
            t = np.arange(1, n + 1)[:, None] * ts
            lead = self._leads[key] = self.vmax * (t + FOLLOWING_MARGIN)
            lead[:, GRIPPER] = np.inf  # the fingers squeeze: their goal may lie inside what they hold
            if len(self._leads) > 256:
                self._leads.clear()
        return lead

    def _mass_of(self, d) -> np.ndarray:
        """The joint-space inertia among the actuated joints (k, k), at d's last step. mj_fullM's
        arguments changed in MuJoCo 4 (m, d, dst; before: m, dst, d.qM): whichever this one takes."""
        full = self._full
        if self._full_m4:
            mujoco.mj_fullM(self.model, d, full)
        else:
            mujoco.mj_fullM(self.model, full, d.qM)
        return full[self._ix]

    def _run(self, rows, ctrl) -> None:
        m, step = self.model, mujoco.mj_step
        for i in rows:
            d = self.datas[i]
            c = d.ctrl
            glide = self._glide[i]
            if glide is None:
                for u in ctrl[i]:
                    c[:] = u
                    step(m, d)
                continue
            mp, mq = d.mocap_pos, d.mocap_quat
            for u, p, q in zip(ctrl[i], *glide):
                c[:] = u
                mp[0] = p
                mq[0] = q
                step(m, d)

    def _read(self, rows) -> None:
        """Sensors, in description order: joints, the finger width (their sum), efforts (a finger's
        force: the squeeze)."""
        gq, ge = self._gather_q, self._gather_e
        for i in rows:
            d = self.datas[i]
            self.q[i] = d.qpos[self.qread] @ gq
            self.dq[i] = d.qvel[self.vread] @ gq
            self.effort[i] = d.qfrc_actuator[self.vread] @ ge

    # -- objects ---------------------------------------------------------------------------------
    def object_state_one(self, base) -> dict:
        """`object_states` for one robot in plain floats: name -> {field: (k,) array}."""
        d = self.datas[0]
        x, y, th, vb, wz = base
        c, s = math.cos(th), math.sin(th)
        out = {}
        for name, (a, v) in self.objects.items():
            px, py, pz, w, qx, qy, qz = d.qpos[a:a + 7].tolist()
            lx, ly, lz, ax, ay, az = d.qvel[v:v + 6].tolist()
            rx, ry = px - x, py - y
            ch, sh = math.cos(0.5 * th), math.sin(0.5 * th)  # q_base⁻¹ = (ch, 0, 0, -sh) ⊗ q
            quat = (ch * qx + sh * qy, ch * qy - sh * qx, ch * qz - sh * w, ch * w + sh * qz)
            vx, vy = lx - vb * c + wz * ry, ly - vb * s - wz * rx
            # body-frame angular velocity to the world: R(q) · ω
            tx, ty, tz = 2 * (qy * az - qz * ay), 2 * (qz * ax - qx * az), 2 * (qx * ay - qy * ax)
            wx = ax + w * tx + qy * tz - qz * ty
            wy = ay + w * ty + qz * tx - qx * tz
            wzz = az + w * tz + qx * ty - qy * tx - wz
            out[name] = {"pos": np.array((c * rx + s * ry, -s * rx + c * ry, pz)), "quat": np.array(quat),
                         "linvel": np.array((c * vx + s * vy, -s * vx + c * vy, lz)),
                         "angvel": np.array((c * wx + s * wy, -s * wx + c * wy, wzz))}
        return out

    def object_states(self, base: np.ndarray) -> dict:
        """name -> {pos, quat (x, y, z, w), linvel, angvel}, (N, k) each, in each robot's base frame."""
        out = {}
        c, s = np.cos(base[:, 2]), np.sin(base[:, 2])
        for name, (a, v) in self.objects.items():
            qp = np.array([d.qpos[a:a + 7] for d in self.datas])
            qv = np.array([d.qvel[v:v + 6] for d in self.datas])
            rel = qp[:, :3] - np.stack([base[:, 0], base[:, 1], np.zeros(self.n)], 1)
            pos = _rot_z_inv(rel, c, s)
            # the body's orientation relative to the base: q_base⁻¹ ⊗ q (both wxyz)
            half = 0.5 * base[:, 2]
            qb = np.stack([np.cos(half), np.zeros(self.n), np.zeros(self.n), -np.sin(half)], 1)
            qr = _quat_mul(qb, qp[:, 3:7])
            quat = np.concatenate([qr[:, 1:4], qr[:, :1]], 1)
            # velocities relative to the moving base: v − v_base − ω_base × r, in base axes
            vb = np.stack([base[:, 3] * c, base[:, 3] * s, np.zeros(self.n)], 1)
            wz = base[:, 4]
            vrel = qv[:, :3] - vb - np.stack([-wz * rel[:, 1], wz * rel[:, 0], np.zeros(self.n)], 1)
            ang_world = _quat_rotate(qp[:, 3:7], qv[:, 3:6])  # a free joint's angular velocity is in its body frame
            ang_world[:, 2] -= wz
            out[name] = {"pos": pos, "quat": quat, "linvel": _rot_z_inv(vrel, c, s),
                         "angvel": _rot_z_inv(ang_world, c, s)}
        return out

    def view(self, i: int):
        """Robot i's bodies, cameras and lights posed for rendering, in a scratch `MjData`: the
        physics' own data is never touched, so asking for frames cannot change the simulation."""
        v = self._view
        if v is None:
            v = self._view = mujoco.MjData(self.model)
        d = self.datas[i]
        v.qpos[:] = d.qpos
        v.mocap_pos[:] = d.mocap_pos
        v.mocap_quat[:] = d.mocap_quat
        mujoco.mj_kinematics(self.model, v)
        mujoco.mj_camlight(self.model, v)
        return v

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _rot_z_inv(v, c, s):
    return np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1], v[:, 2]], 1)


def _quat_mul(a, b):
    aw, ax, ay, az = a.T
    bw, bx, by, bz = b.T
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], 1)


def _quat_rotate(q, v):
    """Rotate vectors v (N, 3) by unit quaternions q (N, 4, wxyz)."""
    w, u = q[:, :1], q[:, 1:4]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)
