"""The state a server reports, written once: the protocol packs it, the recorder checks it, the docs list it.

Every vector is per robot (a server of N robots sends (N, length) arrays); `length` is a number or
"joints" (the description's joint count). `exact` vectors are always measured values; the others
may hold NaN where a value is unknown (a joint whose servo was not read on the last cycle).
"""
from __future__ import annotations

# name -> (length, exact, what it holds); the packed buffer's order (`protocol.pack_state`)
VECTORS: dict[str, tuple] = {
    "q": ("joints", True, "joint positions (rad; m for the torso; the gripper's finger width in m)"),
    "dq": ("joints", False, "joint velocities (NaN where the joint was not measured on the last cycle)"),
    "effort": ("joints", False, "joint efforts (A of servo current on hardware; 0 in the kinematic simulator)"),
    "target": ("joints", True, "the joint targets the safety layer accepted"),
    "ee": (7, False, "gripper pose in the base frame: position (m), quaternion (x, y, z, w)"),
    "ee_vel": (6, False, "gripper twist: linear (m/s), angular (rad/s)"),
    "base": (5, False, "base odometry: x, y (m), θ (rad), v (m/s), ω (rad/s)"),
}

# the other fields: name -> what it holds
FIELDS: dict[str, str] = {
    "time": "the backend's clock (s): simulated time, or time since the driver started",
    "mode": "'ok', 'estop' (latched), 'fault' (see faults) or 'watchdog' (no command for watchdog_timeout)",
    "faults": "latched faults: {code, message, joint, servo, joints, servos} (hardware)",
    "clipped": "{flag: [robot indices]}: what the safety layer clipped for the last command and since "
               "(e.g. 'ee_delta.workspace', 'torso.position_limit', 'base_twist.lapsed')",
    "objects": "{name: {pos, quat, linvel, angvel}} in the base frame (backends that simulate objects)",
    "seq": "the state stream's number (consecutive while subscribed: gaps are lost states)",
    "ts": "server sample time (s since the epoch; wall clock, for latency only)",
    "busy": "the long operation in progress (a hardware reset's move), when there is one",
    "stale": "joints whose values were not read on the last cycle (hardware), when there are some",
    "diagnostics": "control-loop health: rate, cycle time, jitter, bus counters, sample age (hardware)",
    "cameras": "{name: {status, age_ms, frames, fps, size[, error]}}: each camera's latest frame age and health; "
               "a camera not 'ok' refuses frame requests but never stops the arm (hardware with cameras)",
}


def markdown_table() -> str:
    """The state's fields as a Markdown table (docs/ARCHITECTURE.md holds this; a test keeps them equal)."""
    rows = ["| field | per robot | holds |", "|---|---|---|"]
    for name, (length, _, what) in VECTORS.items():
        rows.append(f"| `{name}` | {length} floats | {what} |")
    for name, what in FIELDS.items():
        rows.append(f"| `{name}` | | {what} |")
    return "\n".join(rows)
