"""Forward kinematics and damped-least-squares IK for the Fetch arm (torso + 7 joints -> gripper frame).

Plain-float math on purpose: for one 7-joint chain it is several times faster than numpy's per-call
overhead, and it runs inside every `step`. Every origin on the chain is a pure x/z translation with
zero rpy, so each joint costs a handful of multiply-adds on the rotation's columns.
"""
from __future__ import annotations

import math

import numpy as np

from .description import ARM_AXES, ARM_ORIGINS, GRIPPER_OFFSET, JOINTS

_TORSO_X, _, _TORSO_Z = JOINTS[0].origin


def fk_frames(torso: float, arm, cos=math.cos, sin=math.sin):
    """Gripper position, rotation (row-major 9-tuple) and every arm joint's world origin and axis.

    Frames are in base_link. `arm` is any sequence of 7 floats. The same arithmetic runs elementwise
    on numpy arrays: `kinematics_batch.fk_frames_batch` passes (N,) arrays with `np.cos`/`np.sin` for N robots at once.
    """
    # Rotation as three columns (x, y, z axes of the current frame in base_link).
    c0x, c0y, c0z = 1.0, 0.0, 0.0
    c1x, c1y, c1z = 0.0, 1.0, 0.0
    c2x, c2y, c2z = 0.0, 0.0, 1.0
    px, py, pz = _TORSO_X, 0.0, _TORSO_Z + torso
    origins = []
    axes = []
    for (ox, _oy, oz), axis, q in zip(ARM_ORIGINS, ARM_AXES, arm):
        # `p = p + ...`, not `+=`: on arrays (the batched FK) `+=` would alias every stored origin
        px = px + ox * c0x + oz * c2x
        py = py + ox * c0y + oz * c2y
        pz = pz + ox * c0z + oz * c2z
        c, s = cos(q), sin(q)
        if axis == "z":
            c0x, c0y, c0z, c1x, c1y, c1z = (c * c0x + s * c1x, c * c0y + s * c1y, c * c0z + s * c1z,
                                            c * c1x - s * c0x, c * c1y - s * c0y, c * c1z - s * c0z)
            axes.append((c2x, c2y, c2z))
        elif axis == "y":
            c0x, c0y, c0z, c2x, c2y, c2z = (c * c0x - s * c2x, c * c0y - s * c2y, c * c0z - s * c2z,
                                            s * c0x + c * c2x, s * c0y + c * c2y, s * c0z + c * c2z)
            axes.append((c1x, c1y, c1z))
        else:  # x
            c1x, c1y, c1z, c2x, c2y, c2z = (c * c1x + s * c2x, c * c1y + s * c2y, c * c1z + s * c2z,
                                            c * c2x - s * c1x, c * c2y - s * c1y, c * c2z - s * c1z)
            axes.append((c0x, c0y, c0z))
        origins.append((px, py, pz))
    g = GRIPPER_OFFSET
    pos = (px + g * c0x, py + g * c0y, pz + g * c0z)
    rot = (c0x, c1x, c2x, c0y, c1y, c2y, c0z, c1z, c2z)
    return pos, rot, origins, axes


def forward(torso: float, arm) -> tuple[np.ndarray, np.ndarray]:
    """Gripper position (3,) and rotation matrix (3, 3) in base_link."""
    pos, rot, _, _ = fk_frames(float(torso), [float(q) for q in arm])
    return np.array(pos), np.array(rot).reshape(3, 3)


def jacobian_array(pos, origins, axes) -> np.ndarray:
    """Geometric Jacobian (6, 7): rows (vx, vy, vz, wx, wy, wz) x 7 arm joints, from `fk_frames` output.

    Built column by column (one tuple per joint) and handed to numpy once: the IK solve and the
    gripper twist both want it as an array.
    """
    ex, ey, ez = pos
    cols = []
    for (ox, oy, oz), (ax, ay, az) in zip(origins, axes):
        rx, ry, rz = ex - ox, ey - oy, ez - oz
        cols.append((ay * rz - az * ry, az * rx - ax * rz, ax * ry - ay * rx, ax, ay, az))
    return np.array(cols).T


def jacobian(pos, origins, axes) -> list[list[float]]:
    """`jacobian_array` as rows of plain floats."""
    return jacobian_array(pos, origins, axes).tolist()


def orientation_error(rot, rot_des) -> tuple[float, float, float]:
    """Rotation vector (small-angle) taking `rot` to `rot_des`: ½ Σ c_i × c_i_des over the columns."""
    ex = ey = ez = 0.0
    for k in range(3):
        ax, ay, az = rot[k], rot[3 + k], rot[6 + k]
        bx, by, bz = rot_des[k], rot_des[3 + k], rot_des[6 + k]
        ex += ay * bz - az * by
        ey += az * bx - ax * bz
        ez += ax * by - ay * bx
    return 0.5 * ex, 0.5 * ey, 0.5 * ez


_DLS_CONSTANTS: dict = {}


def _dls_constants(damping: float, orientation_weight: float):
    """(row weights as a column, row weights, λ²·I), cached per (damping, weight)."""
    c = _DLS_CONSTANTS.get((damping, orientation_weight))
    if c is None:
        w = np.array([1.0, 1.0, 1.0, orientation_weight, orientation_weight, orientation_weight])
        c = (w[:, None].copy(), w, np.eye(6) * (damping * damping))
        _DLS_CONSTANTS[(damping, orientation_weight)] = c
    return c


def _dls(J: np.ndarray, e: np.ndarray, lam2: np.ndarray) -> np.ndarray:
    """Jᵀ (J Jᵀ + λ² I)⁻¹ e for an already weighted J and e (np.dot: cheaper than @ at this size, same bits)."""
    A = np.dot(J, J.T)
    A += lam2
    return np.dot(J.T, np.linalg.solve(A, e))


def dls_step(jac, err, damping: float = 0.05, orientation_weight: float = 0.5) -> np.ndarray:
    """One damped-least-squares update dq = Jᵀ (J Jᵀ + λ² I)⁻¹ e for a 6-D task error.

    The orientation rows are weighted down so that, near singularities or limits, position wins.
    """
    wcol, w, lam2 = _dls_constants(damping, orientation_weight)
    return _dls(np.multiply(jac, wcol), np.multiply(err, w), lam2)


def limited_step(q: np.ndarray, jac, err, lower, upper, damping: float = 0.05,
                 orientation_weight: float = 0.5) -> np.ndarray:
    """A DLS step that respects joint limits: joints that would pass a limit are frozen at it
    (their Jacobian columns zeroed) and the rest take up the motion in one more solve."""
    wcol, w, lam2 = _dls_constants(damping, orientation_weight)
    J = np.multiply(jac, wcol)
    e = np.multiply(err, w)
    new = q + _dls(J, e, lam2)
    clipped = np.minimum(np.maximum(new, lower), upper)  # np.clip, without its wrapper
    if clipped.tolist() != new.tolist():  # some joint would pass a limit (seven floats: cheaper as lists)
        J[:, clipped != new] = 0.0
        new = q + _dls(J, e, lam2)
        clipped = np.minimum(np.maximum(new, lower), upper)
    return clipped


def solve_ik(torso: float, arm, target_pos, target_rot=None, lower=None, upper=None,
             iterations: int = 100, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """Iterated DLS IK to a gripper position (and rotation, default: pointing down), joint limits clipped.

    Returns the arm joint vector and the final position error in metres. Used for set-up (ready
    poses, `move_ee(target=...)`); per-step Cartesian control takes a single `dls_step`.
    """
    q = np.array(arm, dtype=float)
    lower = np.array([j.lower for j in JOINTS[1:8]]) if lower is None else np.asarray(lower)
    upper = np.array([j.upper for j in JOINTS[1:8]]) if upper is None else np.asarray(upper)
    rot_des = DOWN if target_rot is None else tuple(np.asarray(target_rot, dtype=float).ravel())
    tx, ty, tz = (float(v) for v in target_pos)
    err_norm = math.inf
    for _ in range(iterations):
        pos, rot, origins, axes = fk_frames(torso, q.tolist())
        wx, wy, wz = orientation_error(rot, rot_des)
        e = (tx - pos[0], ty - pos[1], tz - pos[2], wx, wy, wz)
        err_norm = math.sqrt(e[0] ** 2 + e[1] ** 2 + e[2] ** 2)
        if err_norm < tol and math.sqrt(wx * wx + wy * wy + wz * wz) < 10 * tol:
            break
        q = limited_step(q, jacobian_array(pos, origins, axes), e, lower, upper, damping=0.02,
                         orientation_weight=1.0)
    pos, _, _, _ = fk_frames(torso, q.tolist())
    err_norm = math.dist(pos, (tx, ty, tz))
    return q, err_norm


# Gripper pointing straight down: its x axis along -z, y axis along +y.
DOWN = (0.0, 0.0, 1.0,
        0.0, 1.0, 0.0,
        -1.0, 0.0, 0.0)


def rot_to_quat(rot) -> tuple[float, float, float, float]:
    """Row-major 3x3 rotation -> unit quaternion (x, y, z, w)."""
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = rot
    tr = r00 + r11 + r22
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        return ((r21 - r12) / s, (r02 - r20) / s, (r10 - r01) / s, 0.25 * s)
    if r00 > r11 and r00 > r22:
        s = math.sqrt(1.0 + r00 - r11 - r22) * 2
        return (0.25 * s, (r01 + r10) / s, (r02 + r20) / s, (r21 - r12) / s)
    if r11 > r22:
        s = math.sqrt(1.0 + r11 - r00 - r22) * 2
        return ((r01 + r10) / s, 0.25 * s, (r12 + r21) / s, (r02 - r20) / s)
    s = math.sqrt(1.0 + r22 - r00 - r11) * 2
    return ((r02 + r20) / s, (r12 + r21) / s, 0.25 * s, (r10 - r01) / s)
