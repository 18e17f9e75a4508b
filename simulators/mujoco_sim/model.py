"""The robot and its scene as MJCF, generated from the robot description: one source of truth.

Every body of the chain sits where `robot_env.model.description` puts its joint (origins, axes,
limits), so MuJoCo's grip site is the forward kinematics' gripper frame (tested to 1e-9 m over random
poses). Collision geometry is primitive (capsules, boxes); no Fetch meshes are shipped (those in
Gymnasium-Robotics derive from fetch_description, licensed non-commercial). Masses and actuator
effort limits are the public Fetch URDF's. The base is a mocap body: it moves kinematically with the
odometry, as the kinematic simulator's does; everything above it is joint-driven.

Actuators: each joint has a position servo (kp, kv) and a velocity feed-forward term, which track the
shared motion limiter's trajectory each substep, as the servos track goal positions on hardware. The
two fingers follow one width target (half each) with a force limit. Arm bodies are gravity
compensated (the servos' own loops do that on the robot); objects are not.
"""
from __future__ import annotations

import math

from robot_env.model.description import FETCH, GRIPPER, RobotDescription

from .scenes import TABLE_TOP, Scene

# Fetch URDF masses (kg) and effort limits (N·m, N) by joint, and position-servo gains (kp, kv). With
# these efforts the arm follows the limiter at up to ~5 rad/s² (the mujoco config's arm_acceleration);
# at the default profile's 20 rad/s² the shoulder pan saturates and lags.
LINKS = {
    "torso_lift_joint": dict(mass=10.78, effort=450.0, kp=2e+06, kv=20000, radius=0.0),
    "shoulder_pan_joint": dict(mass=2.56, effort=33.82, kp=15000, kv=300, radius=0.06),
    "shoulder_lift_joint": dict(mass=2.66, effort=131.76, kp=30000, kv=600, radius=0.06),
    "upperarm_roll_joint": dict(mass=2.33, effort=76.94, kp=10000, kv=200, radius=0.055),
    "elbow_flex_joint": dict(mass=2.13, effort=66.18, kp=15000, kv=250, radius=0.05),
    "forearm_roll_joint": dict(mass=1.66, effort=29.35, kp=5000, kv=75, radius=0.05),
    "wrist_flex_joint": dict(mass=1.73, effort=25.70, kp=5000, kv=75, radius=0.045),
    "wrist_roll_joint": dict(mass=0.14, effort=7.36, kp=2000, kv=25, radius=0.04),
    "head_pan_joint": dict(mass=2.26, effort=10.0, kp=2000, kv=50, radius=0.0),
    "head_tilt_joint": dict(mass=0.91, effort=10.0, kp=2000, kv=50, radius=0.0),
}
GRIPPER_MASS = 1.52
FINGER_MASS = 0.08
FINGER_KP, FINGER_KV = 3000.0, 60.0
SQUEEZE = 0.02  # m of a finger's goal past the object at which it pushes with the full grip force
ARMATURE = 0.05  # reflected rotor inertia (kg·m²): keeps the light wrist stable at a 2 ms step

# Finger pads: the grasp centre is the grip site (the gripper frame's origin); pads reach 2 cm past it.
PAD_HALF = (0.03, 0.006, 0.012)  # along the gripper's x (approach), y (closing), z
PAD_X = -0.01

# Contact: the robot touches the table and the objects (not itself, nor the floor it never reaches
# inside the workspace: a quarter of a physics step's cost); objects touch everything.
ROBOT, WORLD, FLOOR = 'contype="2" conaffinity="0"', 'contype="1" conaffinity="3"', 'contype="1" conaffinity="1"'
VISUAL = 'contype="0" conaffinity="0" group="1"'


def _v(x) -> str:
    return " ".join(f"{float(c):.9g}" for c in x)


def _axis(a: str) -> str:
    return {"x": "1 0 0", "y": "0 1 0", "z": "0 0 1"}[a]


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> str:
    """`xyaxes` for a camera at `eye` looking at `target` (MuJoCo cameras look along their -z)."""
    f = [t - e for t, e in zip(target, eye)]
    n = math.sqrt(sum(c * c for c in f))
    f = [c / n for c in f]
    x = [f[1] * up[2] - f[2] * up[1], f[2] * up[0] - f[0] * up[2], f[0] * up[1] - f[1] * up[0]]
    n = math.sqrt(sum(c * c for c in x))
    x = [c / n for c in x]
    y = [x[1] * f[2] - x[2] * f[1], x[2] * f[0] - x[0] * f[2], x[0] * f[1] - x[1] * f[0]]
    return _v(x + y)


def _joint(j, extra: str = "") -> str:
    kind = "slide" if j.kind == "prismatic" else "hinge"
    lim = LINKS[j.name]
    return (f'<joint name="{j.name}" type="{kind}" axis="{_axis(j.axis)}" range="{j.lower:.9g} {j.upper:.9g}" '
            f'armature="{ARMATURE}" damping="0" actuatorfrcrange="{-lim["effort"]:.9g} {lim["effort"]:.9g}"{extra}/>')


def _link_geom(j, next_origin) -> str:
    """A capsule from this joint's origin to the next one (the link between them)."""
    r = LINKS[j.name]["radius"]
    m = LINKS[j.name]["mass"]
    if r <= 0.0:
        return ""
    x, y, z = next_origin
    if math.sqrt(x * x + y * y + z * z) < 1e-6:
        return f'<geom type="sphere" size="{r}" mass="{m}" {ROBOT} rgba="0.85 0.85 0.85 1"/>'
    return (f'<geom type="capsule" fromto="0 0 0 {x:.9g} {y:.9g} {z:.9g}" size="{r}" mass="{m}" {ROBOT} '
            f'rgba="0.85 0.85 0.85 1"/>')


def robot_xml(desc: RobotDescription = FETCH, wrist_camera: bool = True) -> str:
    """The robot's bodies (base_link downwards) as a worldbody fragment."""
    js = desc.joints
    torso, arm, grip, head_pan, head_tilt = js[0], js[1:8], js[GRIPPER], js[9], js[10]
    out = ['<body name="base_link" mocap="true">',
           # the base pushes objects (it is kinematic: it drives through the fixed table); the torso column
           # is visual, else a base driven into the table would shove the torso's joint
           f'<geom type="cylinder" size="0.28 0.18" pos="0 0 0.18" {ROBOT} rgba="0.3 0.3 0.35 1"/>',
           f'<body name="torso_lift_link" pos="{_v(torso.origin)}" gravcomp="1">',
           _joint(torso),
           f'<geom type="box" size="0.08 0.17 0.3" pos="-0.02 0 0.2" mass="{LINKS[torso.name]["mass"]}" {VISUAL} '
           'rgba="0.9 0.9 0.9 1"/>']
    for i, j in enumerate(arm):
        nxt = arm[i + 1].origin if i + 1 < len(arm) else (grip.origin[0] - 0.07, 0.0, 0.0)
        out.append(f'<body name="{j.name.replace("_joint", "_link")}" pos="{_v(j.origin)}" gravcomp="1">')
        out.append(_joint(j))
        out.append(_link_geom(j, nxt))
    # gripper_link: fixed to wrist_roll_link; its origin is the end effector of the forward kinematics
    out.append(f'<body name="gripper_link" pos="{_v(grip.origin)}" gravcomp="1">')
    out.append('<site name="grip" size="0.008" rgba="0 1 0 0.6" group="4"/>')  # group 4: not in camera frames
    out.append(f'<geom type="box" size="0.015 0.065 0.03" pos="-0.055 0 0" mass="{GRIPPER_MASS}" {ROBOT} '
               'rgba="0.25 0.25 0.3 1"/>')
    if wrist_camera:
        out.append('<camera name="wrist" pos="-0.05 0 0.045" xyaxes="0 -1 0 0 0 1" fovy="75"/>')
    half = grip.upper / 2
    for side, sign in (("l", 1), ("r", -1)):
        out.append(f'<body name="{side}_gripper_finger_link" gravcomp="1">')
        out.append(f'<joint name="{side}_gripper_finger_joint" type="slide" axis="0 {sign} 0" range="0 {half:.9g}" '
                   f'armature="0.01" actuatorfrcrange="-{{grip_force}} {{grip_force}}"/>')
        out.append(f'<geom name="{side}_pad" type="box" size="{_v(PAD_HALF)}" pos="{PAD_X} {sign * PAD_HALF[1]:.9g} 0" '
                   f'mass="{FINGER_MASS}" friction="1 0.05 0.001" condim="4" {ROBOT} rgba="0.2 0.2 0.2 1"/>')
        out.append('</body>')
    out.append('</body>')  # gripper_link
    out.extend('</body>' for _ in arm)
    # head: pan on the torso, tilt on the pan; the head camera looks along the tilt link's x
    out.append(f'<body name="head_pan_link" pos="{_v(head_pan.origin)}" gravcomp="1">')
    out.append(_joint(head_pan))
    out.append(f'<geom type="box" size="0.08 0.12 0.06" pos="0.03 0 0.04" mass="{LINKS[head_pan.name]["mass"]}" '
               f'{VISUAL} rgba="0.9 0.9 0.9 1"/>')
    out.append(f'<body name="head_tilt_link" pos="{_v(head_tilt.origin)}" gravcomp="1">')
    out.append(_joint(head_tilt))
    out.append(f'<geom type="box" size="0.04 0.1 0.04" mass="{LINKS[head_tilt.name]["mass"]}" {VISUAL} '
               'rgba="0.2 0.2 0.25 1"/>')
    out.append('<camera name="head" pos="0.05 0 0.02" xyaxes="0 -1 0 0 0 1" fovy="58"/>')
    out.append('</body></body>')
    out.append('</body>')  # torso_lift_link
    out.append('</body>')  # base_link
    return "\n".join(out)


def actuators_xml(desc: RobotDescription = FETCH, grip_force: float = 60.0) -> str:
    """Per joint: a position servo (force = kp·(ctrl − q) − kv·q̇), a velocity feed-forward
    (force = kv·ctrl) and an inertia feed-forward (a torque: M(q)·q̈ of the trajectory), so a
    trajectory is tracked without lag, within the joint's effort limit; then the two fingers."""
    pos, vel, ff = [], [], []
    for j in desc.joints:
        if j.name not in LINKS:
            continue
        g = LINKS[j.name]
        pos.append(f'<general name="{j.name}" joint="{j.name}" gainprm="{g["kp"]:.9g}" '
                   f'biastype="affine" biasprm="0 {-g["kp"]:.9g} {-g["kv"]:.9g}"/>')
        vel.append(f'<general name="{j.name}_vel" joint="{j.name}" gainprm="{g["kv"]:.9g}"/>')
        ff.append(f'<motor name="{j.name}_ff" joint="{j.name}"/>')
    # stiff enough that the force limit, not the servo, sets the squeeze (else > 70 N could not be reached)
    kp = max(FINGER_KP, grip_force / SQUEEZE)
    fingers = [f'<general name="{s}_gripper_finger" joint="{s}_gripper_finger_joint" gainprm="{kp:.9g}" '
               f'biastype="affine" biasprm="0 {-kp:.9g} {-FINGER_KV}"/>' for s in ("l", "r")]
    return "<actuator>\n" + "\n".join(pos + vel + ff + fingers) + "\n</actuator>"


def scene_xml(scene: Scene, ready_xy) -> str:
    """The floor, the scene's table and its free objects (each placed at the table's centre: a reset
    puts them where the episode wants them), and the fixed external camera."""
    out = [f'<geom name="floor" type="plane" size="6 6 0.1" {FLOOR} rgba="0.55 0.6 0.65 1"/>']
    cx, cy = scene.table_center(ready_xy)
    if scene.table_half[0] > 0:
        hz = TABLE_TOP / 2
        out.append(f'<body name="table0" pos="{cx:.9g} {cy:.9g} {hz:.9g}">'
                   f'<geom name="table" type="box" size="{_v(scene.table_half)} {hz:.9g}" '
                   f'friction="{scene.table_friction} 0.005 0.0001" {WORLD} rgba="0.75 0.6 0.45 1"/></body>')
    for o in scene.objects:
        z = scene.rest_height(o)
        out.append(f'<body name="{o.name}" pos="{cx:.9g} {cy:.9g} {z:.9g}"><freejoint name="{o.name}"/>'
                   f'<geom name="{o.name}" type="{o.shape}" size="{_v(o.size)}" mass="{o.mass}" '
                   f'friction="{o.friction} 0.005 0.0001" condim="4" {WORLD} rgba="{_v(o.rgba)}"/></body>')
    eye = (cx + 0.9, cy - 0.9, TABLE_TOP + 0.75)
    out.append(f'<camera name="external" pos="{_v(eye)}" xyaxes="{look_at(eye, (cx, cy, TABLE_TOP))}" fovy="45"/>')
    return "\n".join(out)


def mjcf(scene: Scene, ready_xy, desc: RobotDescription = FETCH, *, timestep: float = 0.002,
         grip_force: float = 60.0, shadows: bool = False, antialias: bool = False, wrist_camera: bool = True) -> str:
    """The whole model. Shadows and multisampling are off by default: each costs several times a
    frame on a CPU renderer (shadows use a 1024² map: MuJoCo's default 4096² costs ~10x more again)."""
    robot = robot_xml(desc, wrist_camera).replace("{grip_force}", f"{grip_force:.9g}")
    return f"""<mujoco model="robot_env_fetch_{scene.name}">
<compiler angle="radian" autolimits="true"/>
<option timestep="{timestep:.9g}" integrator="implicitfast" cone="elliptic" impratio="10"/>
<visual><quality shadowsize="{1024 if shadows else 0}" offsamples="{4 if antialias else 0}"/>
<global offwidth="640" offheight="640"/><map znear="0.01"/></visual>
<worldbody>
<light name="sun" pos="0.5 0 3" dir="0 0 -1" directional="true" castshadow="{'true' if shadows else 'false'}"
 diffuse="0.7 0.7 0.7" ambient="0.3 0.3 0.3"/>
{scene_xml(scene, ready_xy)}
{robot}
</worldbody>
{actuators_xml(desc, grip_force)}
</mujoco>
"""
