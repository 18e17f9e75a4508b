"""FK against a generic homogeneous-transform chain built from URDF joint elements, and IK round trips."""
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from robot_env.model.description import JOINTS, READY_ARM, READY_TORSO
from robot_env.model.kinematics import DOWN, fk_frames, forward, jacobian, rot_to_quat, solve_ik

# The arm chain as fetch_description's URDF writes it (origins, axes), independent of description.py.
URDF = """<robot name="fetch">
 <joint name="torso_lift_joint" type="prismatic"><origin xyz="-0.086875 0 0.37743" rpy="0 0 0"/><axis xyz="0 0 1"/></joint>
 <joint name="shoulder_pan_joint" type="revolute"><origin xyz="0.119525 0 0.34858" rpy="0 0 0"/><axis xyz="0 0 1"/></joint>
 <joint name="shoulder_lift_joint" type="revolute"><origin xyz="0.117 0 0.06" rpy="0 0 0"/><axis xyz="0 1 0"/></joint>
 <joint name="upperarm_roll_joint" type="continuous"><origin xyz="0.219 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/></joint>
 <joint name="elbow_flex_joint" type="revolute"><origin xyz="0.133 0 0" rpy="0 0 0"/><axis xyz="0 1 0"/></joint>
 <joint name="forearm_roll_joint" type="continuous"><origin xyz="0.197 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/></joint>
 <joint name="wrist_flex_joint" type="revolute"><origin xyz="0.1245 0 0" rpy="0 0 0"/><axis xyz="0 1 0"/></joint>
 <joint name="wrist_roll_joint" type="continuous"><origin xyz="0.1385 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/></joint>
 <joint name="gripper_axis" type="fixed"><origin xyz="0.16645 0 0" rpy="0 0 0"/></joint>
</robot>"""


def _rot(axis, q):
    x, y, z = axis / np.linalg.norm(axis)
    c, s, C = math.cos(q), math.sin(q), 1 - math.cos(q)
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def _rpy(r, p, y):
    return _rot(np.array([0, 0, 1.0]), y) @ _rot(np.array([0, 1.0, 0]), p) @ _rot(np.array([1.0, 0, 0]), r)


def urdf_fk(q_by_name):
    T = np.eye(4)
    for j in ET.fromstring(URDF).iter("joint"):
        o = j.find("origin")
        xyz = np.array([float(v) for v in o.get("xyz").split()])
        rpy = [float(v) for v in o.get("rpy").split()]
        A = np.eye(4)
        A[:3, :3] = _rpy(*rpy)
        A[:3, 3] = xyz
        T = T @ A
        if j.get("type") == "fixed":
            continue
        axis = np.array([float(v) for v in j.find("axis").get("xyz").split()])
        M = np.eye(4)
        q = q_by_name[j.get("name")]
        if j.get("type") == "prismatic":
            M[:3, 3] = axis * q
        else:
            M[:3, :3] = _rot(axis, q)
        T = T @ M
    return T


def test_zero_pose_matches_published_gripper_origin():
    pos, rot = forward(0.0, [0.0] * 7)
    np.testing.assert_allclose(pos, [1.1281, 0.0, 0.7860], atol=1e-4)
    np.testing.assert_allclose(rot, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_fk_matches_urdf_chain(seed):
    rng = np.random.default_rng(seed)
    lo = np.array([j.lower for j in JOINTS[:8]])
    hi = np.array([j.upper for j in JOINTS[:8]])
    q = rng.uniform(lo, hi)
    T = urdf_fk({j.name: v for j, v in zip(JOINTS[:8], q)})
    pos, rot = forward(q[0], q[1:])
    np.testing.assert_allclose(pos, T[:3, 3], atol=1e-12)
    np.testing.assert_allclose(rot, T[:3, :3], atol=1e-12)


def test_jacobian_matches_finite_differences():
    q = np.array(READY_ARM) + 0.1
    pos, rot, origins, axes = fk_frames(READY_TORSO, q.tolist())
    J = np.array(jacobian(pos, origins, axes))
    eps = 1e-7
    for i in range(7):
        dq = q.copy()
        dq[i] += eps
        p2, _ = forward(READY_TORSO, dq)
        np.testing.assert_allclose((p2 - np.array(pos)) / eps, J[:3, i], atol=1e-5)


def test_ready_pose_points_down():
    pos, rot = forward(READY_TORSO, READY_ARM)
    np.testing.assert_allclose(rot, np.array(DOWN).reshape(3, 3), atol=1e-9)
    assert 0.5 < pos[0] < 0.7 and abs(pos[1]) < 1e-9


@pytest.mark.parametrize("seed", range(10))
def test_ik_round_trip_over_goal_box(seed):
    """Every reaching goal (±0.15 m around the ready pose) is solved pointing down within limits."""
    rng = np.random.default_rng(seed)
    start, _ = forward(READY_TORSO, READY_ARM)
    target = start + rng.uniform(-0.15, 0.15, 3)
    q, err = solve_ik(READY_TORSO, READY_ARM, target)
    assert err < 1e-3
    pos, rot = forward(READY_TORSO, q)
    np.testing.assert_allclose(pos, target, atol=1e-3)
    np.testing.assert_allclose(rot, np.array(DOWN).reshape(3, 3), atol=2e-2)
    lo = np.array([j.lower for j in JOINTS[1:8]])
    hi = np.array([j.upper for j in JOINTS[1:8]])
    assert np.all(q >= lo) and np.all(q <= hi)


def test_ik_clips_unreachable_target_to_limits():
    q, err = solve_ik(READY_TORSO, READY_ARM, (3.0, 0.0, 0.8), iterations=50)
    assert err > 1.0  # honestly reports that it did not get there
    lo = np.array([j.lower for j in JOINTS[1:8]])
    hi = np.array([j.upper for j in JOINTS[1:8]])
    assert np.all(q >= lo) and np.all(q <= hi)


def test_quaternion_is_unit_and_matches_rotation():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.uniform(-1.5, 1.5, 7)
        _, rot = forward(0.1, q)
        x, y, z, w = rot_to_quat(tuple(rot.ravel()))
        assert abs(x * x + y * y + z * z + w * w - 1) < 1e-12
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(R, rot, atol=1e-9)
