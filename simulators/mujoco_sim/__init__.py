"""The MuJoCo physics backend (`backend = "mujoco"`, the `mujoco` extra): the robot as MJCF generated
from the robot description, joint-driven through the shared safety layer, with tables, objects and
cameras."""
import os as _os

_os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: it picks its GL context then (render.py)
