"""Scripted agents for the Fetch tasks: observation in, action out, through the public action space only.

Each agent reads Gymnasium-Robotics' observation layout (the 25-d object observation: grip position
0:3, object position 3:6, finger half-widths 9:11, object velocity relative to the grip × dt 14:17,
grip velocity × dt 20:23) and the goal, and answers an `ee_delta` action (Box(4): gripper
displacement × `action_scale` m, then the gripper: width (a + 1) / 2 × its maximum, ignored when the
task blocks it). They know nothing of the server: no joint state, no physics, only the task's public
sizes (the 5 cm block and puck), which they take as arguments.

The agents are stateful (a phase per episode) and batch-friendly: `reset(obs)` at the start of every
episode, then `act(obs)` each step, with `obs` either one env's dict or a vector env's, (n, ·) arrays;
`reset(obs, mask)` restarts some rows only (a vector env's `NEXT_STEP` autoreset: after the step that
follows the one that ended rows `mask`, whose observation starts their next episode).
`for_env(env)` picks the agent of an env's task (an env id, a made env or a vector env).

They move the gripper with proportional steps toward waypoints (`_toward`: the whole error at once,
scaled as a vector to fit the action box, so that the direction holds; the server's motion limiter
brakes the arm onto the target); they wait for the arm to slow down where its lag would overshoot.
"""
from __future__ import annotations

import math

import numpy as np


def _rows(obs: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    o = np.asarray(obs["observation"], float)
    g = np.asarray(obs["desired_goal"], float)
    one = o.ndim == 1
    return np.atleast_2d(o), np.atleast_2d(g), one


def _toward(frm, to, gain: float, scale: float) -> list:
    """The displacement action (3) toward `to`: the error as a fraction of a full-scale step times
    `gain` (1: the whole error at once), scaled down as a whole (its direction kept) to fit ±1."""
    k = gain / scale
    a = [k * (t - f) for f, t in zip(frm, to)]
    m = max(abs(a[0]), abs(a[1]), abs(a[2]))
    return [v / m for v in a] if m > 1.0 else a


class ScriptedAgent:
    """Base: per-row phases; subclasses implement `_start(o, g) -> (phase, memo)` and
    `_act_row(row, o, g) -> 4 floats`. `action_scale`: metres per full-scale displacement action;
    `dt`: the control period (s), which the observation's velocities are multiplied by."""

    def __init__(self, action_scale: float = 0.05, dt: float = 0.04):
        self.scale = action_scale
        self.dt = dt
        self.phase: list = []
        self.memo: list = []

    def reset(self, obs: dict, mask=None) -> None:
        o, g, _ = _rows(obs)
        n = o.shape[0]
        if len(self.phase) != n:  # a new batch size: every row starts
            self.phase, self.memo, mask = [None] * n, [None] * n, None
        for i in range(n):
            if mask is None or mask[i]:
                self.phase[i], self.memo[i] = self._start(o[i], g[i])

    def act(self, obs: dict) -> np.ndarray:
        o, g, one = _rows(obs)
        if len(self.phase) != o.shape[0]:
            self.reset(obs)
        a = np.array([self._act_row(i, o[i], g[i]) for i in range(o.shape[0])], dtype=np.float32)
        return a[0] if one else a

    __call__ = act

    def _start(self, o, g):
        return None, None

    def _act_row(self, i, o, g):
        raise NotImplementedError


class ReachAgent(ScriptedAgent):
    """FetchReach: proportional reach, full scale once the goal is more than 5 cm away on an axis
    (`demo.scripted_action`'s numbers, for one env or a batch). No phases."""

    def __init__(self, gain: float = 20.0, **kw):
        super().__init__(**kw)
        self.gain = gain

    def reset(self, obs: dict, mask=None) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        err = np.asarray(obs["desired_goal"]) - np.asarray(obs["achieved_goal"])
        a = np.zeros(err.shape[:-1] + (4,), dtype=np.float32)
        a[..., :3] = np.clip(err * self.gain, -1.0, 1.0)
        return a

    __call__ = act


def _seg_dist(a, b, c) -> float:
    """Distance (xy) from point c to the segment a-b."""
    abx, aby = b[0] - a[0], b[1] - a[1]
    l2 = abx * abx + aby * aby
    t = 0.0 if l2 < 1e-12 else min(1.0, max(0.0, ((c[0] - a[0]) * abx + (c[1] - a[1]) * aby) / l2))
    return math.hypot(a[0] + t * abx - c[0], a[1] + t * aby - c[1])


class PushAgent(ScriptedAgent):
    """FetchPush: behind the block (opposite the goal), at its centre's height, then along the line
    to the goal in proportional steps; back behind it when the block drifts off the line.

    Phases: "approach" (to the point `behind` m behind the block on the goal line, going round the
    block at `orbit` m from its centre when the straight way passes it closer than `clearance`),
    "push", "hold" (the block within `done` m of the goal: the arm keeps still). The gripper stays
    at the push height throughout: `height` m above the block's centre (the fingertips clear the table)."""

    def __init__(self, contact: float = 0.037, behind: float = 0.06, orbit: float = 0.07,
                 clearance: float = 0.055, height: float = 0.005, done: float = 0.02, max_lateral: float = 0.02,
                 lateral_gain: float = 0.5, max_push: float = 0.03, settle: float = 0.004, gain: float = 1.0, **kw):
        super().__init__(**kw)
        # contact: the block's half size (2.5 cm) and the closed fingers' (1.2 cm), centre to centre
        self.contact, self.behind, self.orbit, self.clearance = contact, behind, orbit, clearance
        self.height, self.done, self.max_lat, self.gain = height, done, max_lateral, gain
        self.lateral_gain, self.max_push, self.settle = lateral_gain, max_push, settle

    def _start(self, o, g):
        return "approach", {"z": float(o[5]) + self.height, "turn": 0.0}

    def _around(self, m, p, t, b) -> tuple:
        """The next waypoint from p to t (xy) that keeps clear of the block at b."""
        if _seg_dist(p, t, b) >= self.clearance:
            m["turn"] = 0.0
            return t
        rx, ry = p[0] - b[0], p[1] - b[1]
        r = math.hypot(rx, ry)
        tp = math.atan2(ry, rx)
        diff = (math.atan2(t[1] - b[1], t[0] - b[0]) - tp + math.pi) % (2 * math.pi) - math.pi
        if m["turn"] == 0.0:
            m["turn"] = 1.0 if diff >= 0 else -1.0  # the shorter way round, kept until the way is clear
        step = math.radians(60.0 if r > self.orbit - 0.01 else 15.0)
        a = tp + m["turn"] * min(abs(diff), step)
        return b[0] + self.orbit * math.cos(a), b[1] + self.orbit * math.sin(a)

    def _act_row(self, i, o, g):
        m = self.memo[i]
        z = m["z"]
        px, py, pz = o[0], o[1], o[2]
        bx, by = o[3], o[4]
        dx, dy = g[0] - bx, g[1] - by
        dist = math.hypot(dx, dy)
        phase = self.phase[i]
        if dist < self.done or (phase == "hold" and dist < 2 * self.done):
            self.phase[i] = "hold"
            return [0.0, 0.0, 0.0, -1.0]
        ux, uy = dx / dist, dy / dist
        rx, ry = px - bx, py - by
        along = -(rx * ux + ry * uy)  # how far behind the block the gripper is, along the goal line
        lat = -rx * uy + ry * ux  # and how far off the line
        if phase == "push" and (abs(lat) > self.max_lat or along < self.contact - 0.015
                                or along > self.behind + 0.03):
            phase = "approach"
        if phase != "push":
            phase = "approach"
            t = (bx - ux * self.behind, by - uy * self.behind)
            # there, and slowed down (the arm lags: still moving, it would overshoot the line)
            if (math.hypot(t[0] - px, t[1] - py) < 0.012 and abs(pz - z) < 0.01
                    and math.hypot(o[20], o[21]) < self.settle):
                phase, m["turn"] = "push", 0.0
            else:
                self.phase[i] = phase
                wx, wy = self._around(m, (px, py), t, (bx, by))
                return [*_toward((px, py, pz), (wx, wy, z), self.gain, self.scale), -1.0]
        self.phase[i] = phase
        return self._push(i, m, o, ux, uy, dist, along, lat)

    def _push(self, i, m, o, ux, uy, dist, along, lat) -> list:
        # along the line by what is left of it (the block against the gripper), back onto the line
        fwd = min(dist + along - self.contact, self.max_push)
        return self._line_step(o, ux, uy, fwd, -self.lateral_gain * lat, m["z"])

    def _line_step(self, o, ux, uy, fwd, side, z) -> list:
        return [*_toward((0.0, 0.0, o[2]), (ux * fwd - uy * side, uy * fwd + ux * side, z), self.gain, self.scale),
                -1.0]


class SlideAgent(PushAgent):
    """FetchSlide: a strike toward the goal. As `PushAgent` up to the push, which touches the puck
    gently (`touch` m a step: a hit sends it off faster than the gripper moves) and then drives it
    toward the point short of the goal by the distance it would slide on if let go (v² / 2·`decel`, μ·g
    of the puck on the table); once that covers what is left, the gripper stops and the puck slides on
    ("slide"). When it has come to rest: again if it is short, or off the line. The arm reaches no
    farther than about x = 0.85 m (base frame) at the table, and a strike is about as fast as the arm
    (0.3-0.5 m/s: the puck slides on 5-13 cm), so goals much beyond 0.9 m are out of reach."""

    def __init__(self, decel: float = 0.98, rest: float = 0.02, touch: float = 0.008, **kw):
        kw.setdefault("done", 0.03)  # a puck at rest this near the goal is left there: a nudge slides it past
        kw.setdefault("max_push", 0.05)
        super().__init__(**kw)
        self.decel, self.rest, self.touch = decel, rest, touch  # μ·g of the puck on the table (m/s²)

    def _act_row(self, i, o, g):
        if self.phase[i] == "slide":
            speed = math.hypot(o[14] + o[20], o[15] + o[21]) / self.dt
            if speed > self.rest:
                return [0.0, 0.0, 0.0, -1.0]
            self.phase[i], self.memo[i]["turn"] = "approach", 0.0
        return super()._act_row(i, o, g)

    def _push(self, i, m, o, ux, uy, dist, along, lat) -> list:
        v = ((o[14] + o[20]) * ux + (o[15] + o[21]) * uy) / self.dt  # the puck's speed toward the goal
        coast = v * v / (2.0 * self.decel) if v > 0.0 else 0.0  # how far it slides on if let go now
        if coast >= dist:
            self.phase[i] = "slide"
            return [0.0, 0.0, 0.0, -1.0]
        gap = along - self.contact  # to the puck, before touching it: gently (a hit sends it off faster)
        fwd = min(dist - coast + gap, self.max_push)
        if gap > 0.004:
            fwd = min(fwd, gap + self.touch)
        return self._line_step(o, ux, uy, fwd, -self.lateral_gain * lat, m["z"])


class PickAndPlaceAgent(ScriptedAgent):
    """FetchPickAndPlace: open, over the block, down, close, lift and carry the block to the goal, hold.

    Phases: "approach" (the fingers `open_width` m apart, of `width_max`; to `hover` m over the block),
    "descend" (to the block's centre), "grasp" (closing from `close_at` m above the centre on, still
    descending), "carry" (the grip's offset to the block kept, the block to the goal; back to
    "approach" when the block is no longer between the fingers)."""

    def __init__(self, half: float = 0.025, finger_reach: float = 0.02, hover: float = 0.015,
                 open_width: float = 0.064, width_max: float = 0.10, align: float = 0.01, close_at: float = 0.015,
                 lift: float = 0.02, gain: float = 1.0, **kw):
        super().__init__(**kw)
        self.half, self.reach, self.hover = half, finger_reach, hover
        self.open = 2.0 * open_width / width_max - 1.0  # the gripper action that opens them so far
        self.open_half = 0.5 * open_width - 0.003  # finger half-width: open enough to go down
        self.align, self.close_at, self.lift, self.gain = align, close_at, lift, gain

    def _start(self, o, g):
        return "approach", [float(o[5]), 0]  # the block's resting height; steps spent closing

    def _act_row(self, i, o, g):
        z0 = self.memo[i][0]
        p, b = o[0:3], o[3:6]
        half_w = o[9]
        phase = self.phase[i]
        xy_err = math.hypot(b[0] - p[0], b[1] - p[1])
        held = xy_err < self.half and abs(b[2] - p[2]) < self.half and half_w > 0.5 * self.half - 0.004
        if phase == "carry" and not held:
            phase = "approach"
        if phase == "approach" and xy_err < self.align and half_w > self.open_half:
            phase = "descend"
        if phase == "descend":
            if xy_err > 2 * self.align:
                phase = "approach"
            elif p[2] - b[2] < self.close_at:
                phase, self.memo[i][1] = "grasp", 0
        if phase == "grasp":
            self.memo[i][1] += 1
            if self.memo[i][1] >= 3 and half_w < self.half + 0.003 and abs(o[23]) < 0.0005:
                phase = "carry"  # the fingers have stopped on the block
        self.phase[i] = phase
        if phase == "approach":
            t = (b[0], b[1], b[2] + self.half + self.reach + self.hover)
            return [*_toward(p, t, self.gain, self.scale), self.open]
        if phase == "descend":
            return [*_toward(p, b, self.gain, self.scale), self.open]
        if phase == "grasp":
            return [*_toward(p, b, self.gain, self.scale), -1.0]
        # carry: the grip where it puts the block on the goal (keeping the grasp's offset)
        t = [g[0] + p[0] - b[0], g[1] + p[1] - b[1], g[2] + p[2] - b[2]]
        if math.hypot(g[0] - b[0], g[1] - b[1]) > 0.03:
            t[2] = max(t[2], p[2] - b[2] + z0 + self.lift)  # carried clear of the table
        return [*_toward(p, t, self.gain, self.scale), -1.0]


AGENTS = {"FetchReach": ReachAgent, "FetchPush": PushAgent, "FetchSlide": SlideAgent,
          "FetchPickAndPlace": PickAndPlaceAgent}


def for_task(task, dt: float = 0.04, **kw) -> ScriptedAgent:
    """The scripted agent of a `FetchTask` (its action scale; `dt` the server's control period)."""
    cls = AGENTS.get(task.name)
    if cls is None:
        raise ValueError(f"no scripted agent for task {task.name!r}; there are: {', '.join(AGENTS)}")
    if task.control != "ee_delta":
        raise ValueError(f"the scripted agents act through ee_delta actions, not {task.control!r}")
    return cls(action_scale=task.action_scale, dt=dt, **kw)


def for_env(env, **kw) -> ScriptedAgent:
    """The scripted agent of an env: a registered id, or an env made from one (its task and period)."""
    if isinstance(env, str):
        from ..envs.registration import entry
        return for_task(entry(env).task, **kw)
    u = env.unwrapped
    return for_task(u.task, dt=u.dt, **kw)
