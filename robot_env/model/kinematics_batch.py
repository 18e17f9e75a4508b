"""The kinematics of `kinematics`, for N robots at once: what the batched simulator steps per request.

Same formulas, same results (tested to round-off against the scalar functions): FK reuses
`fk_frames` itself on (N,) arrays; the Jacobian, the limit-respecting DLS step and the quaternion
are written with a leading batch axis, so the cost per request is a fixed number of numpy calls
whatever N is.
"""
from __future__ import annotations

import numpy as np

from .kinematics import _dls_constants, fk_frames, rot_to_quat


def fk_frames_batch(torso: np.ndarray, arm: np.ndarray):
    """`fk_frames` for torso (N,) and arm (N, 7): the same tuples with (N,) arrays in place of floats."""
    return fk_frames(np.asarray(torso, dtype=float), np.asarray(arm, dtype=float).T, np.cos, np.sin)


def _stack(vectors, n: int) -> np.ndarray:
    """A sequence of 3-tuples whose entries are floats or (N,) arrays -> (3, len, N)."""
    out = np.empty((3, len(vectors), n))
    for j, (x, y, z) in enumerate(vectors):
        out[0, j] = x
        out[1, j] = y
        out[2, j] = z
    return out


def _cross(a, b):
    """Cross product along the first axis, written out: np.cross costs several times more here."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def jacobian_batch(pos, origins, axes) -> np.ndarray:
    """Geometric Jacobians (N, 6, 7) from `fk_frames_batch` output: `jacobian_array` per robot."""
    n = len(pos[0])
    a = _stack(axes, n)
    r = _stack((pos,), n) - _stack(origins, n)  # (3, 7, N): joint origin -> gripper
    jac = np.empty((6, 7, n))
    jac[0], jac[1], jac[2] = _cross(a, r)
    jac[3:] = a
    return jac.transpose(2, 0, 1)


def _dls_batch(J: np.ndarray, e: np.ndarray, lam2: np.ndarray) -> np.ndarray:
    """Jᵀ (J Jᵀ + λ² I)⁻¹ e per robot: J (N, 6, 7), e (N, 6) -> (N, 7)."""
    A = np.matmul(J, J.transpose(0, 2, 1))
    A += lam2
    x = np.linalg.solve(A, e[..., None])
    return np.matmul(J.transpose(0, 2, 1), x)[..., 0]


def limited_step_batch(q: np.ndarray, jac: np.ndarray, err: np.ndarray, lower, upper,
                       damping: float = 0.05, orientation_weight: float = 0.5) -> np.ndarray:
    """`kinematics.limited_step` per robot: q (N, 7), jac (N, 6, 7), err (N, 6) -> clipped (N, 7).

    Robots with a joint that would pass a limit get that joint frozen (its Jacobian column zeroed)
    and one more solve, exactly as the scalar step; the others keep their first solution.
    """
    wcol, w, lam2 = _dls_constants(damping, orientation_weight)
    J = jac * wcol
    e = err * w
    new = q + _dls_batch(J, e, lam2)
    clipped = np.minimum(np.maximum(new, lower), upper)
    hit = clipped != new
    rows = np.flatnonzero(hit.any(axis=1))
    if rows.size:
        Jr = J[rows] * ~hit[rows][:, None, :]
        again = q[rows] + _dls_batch(Jr, e[rows], lam2)
        clipped[rows] = np.minimum(np.maximum(again, lower), upper)
    return clipped


def orientation_error_batch(rot: np.ndarray, rot_des: np.ndarray) -> np.ndarray:
    """`kinematics.orientation_error` per robot: rot, rot_des (N, 9) row-major -> (N, 3)."""
    cols = rot.T.reshape(3, 3, -1)  # (xyz, column k, N)
    cols_des = rot_des.T.reshape(3, 3, -1)
    out = np.empty((3, rot.shape[0]))
    out[0], out[1], out[2] = (c.sum(axis=0) for c in _cross(cols, cols_des))
    return 0.5 * out.T


def rot_to_quat_batch(rot: np.ndarray) -> np.ndarray:
    """Row-major rotations (N, 9) -> unit quaternions (N, 4) as (x, y, z, w), as `rot_to_quat` gives them.

    The trace branch of Shepperd's method for every robot at once (a gripper near pointing down is
    always on it), `rot_to_quat` itself for the rare rows with a non-positive trace, so both give the
    same quaternion, sign included.
    """
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = rot.T
    tr = r00 + r11 + r22
    s = np.sqrt(np.maximum(tr, 0.0) + 1.0) * 2.0
    out = np.empty((rot.shape[0], 4))
    out[:, 0] = (r21 - r12) / s
    out[:, 1] = (r02 - r20) / s
    out[:, 2] = (r10 - r01) / s
    out[:, 3] = 0.25 * s
    for i in np.flatnonzero(tr <= 0).tolist():
        out[i] = rot_to_quat(rot[i].tolist())
    return out
