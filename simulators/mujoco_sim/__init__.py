"""The MuJoCo physics backend (`backend = "mujoco"`, the `mujoco` extra): the robot as MJCF generated
from the robot description, joint-driven through the shared safety layer, with tables, objects and
cameras."""
