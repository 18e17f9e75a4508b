"""Scenes as data: Gymnasium-Robotics' Fetch tables and objects, placed relative to the gripper's start.

Gymnasium-Robotics places its table and object relative to its robot's base; the robot here is a
different build (the ready pose puts the gripper 0.60 m in front of base_link, not 0.67 m), so each
scene keeps what the task depends on instead: where the table lies *relative to the gripper's start*
(the ready pose's xy). Measured off FetchPush-v4 / FetchSlide-v4 (gymnasium-robotics 1.4.2): the
Push/PickAndPlace table's centre is 0.04-0.06 m behind the start gripper, its top 0.40 m above the
floor; Slide's long table's centre is 0.31 m beyond it. The table top here is set by the robot's
reach instead (`TABLE_TOP`), and tasks start the gripper at their height above it with the torso.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Table top height in base_link: the ready gripper (z ≈ 0.80) is PickAndPlace's start, 0.135 m above it.
TABLE_TOP = 0.665


@dataclass(frozen=True)
class Body:
    """A free object: `shape` "box" (size = half extents) or "cylinder" (size = radius, half height)."""

    name: str
    shape: str
    size: tuple
    mass: float
    friction: float
    rgba: tuple = (0.85, 0.15, 0.15, 1.0)

    @property
    def half_height(self) -> float:
        return self.size[2] if self.shape == "box" else self.size[1]


@dataclass(frozen=True)
class Scene:
    """A table (centre offset from the start gripper's xy, half extents, friction) and its objects."""

    name: str
    table_offset: tuple  # (dx, dy) of the table's centre from the ready gripper's xy
    table_half: tuple  # half extents (x, y); the table's top is at TABLE_TOP
    table_friction: float
    objects: tuple = field(default_factory=tuple)

    def table_center(self, ready_xy) -> tuple:
        return (ready_xy[0] + self.table_offset[0], ready_xy[1] + self.table_offset[1])

    def rest_height(self, obj: Body) -> float:
        """The z of an object's centre resting on the table (base frame)."""
        return TABLE_TOP + obj.half_height

    def info(self, ready_xy) -> dict:
        """What a client may plan with (announced in the spec): the table box, object sizes."""
        cx, cy = self.table_center(ready_xy)
        return {"table": {"center": [cx, cy, TABLE_TOP / 2], "half_size": [*self.table_half, TABLE_TOP / 2],
                          "top": TABLE_TOP},
                "objects": {o.name: {"shape": o.shape, "size": list(o.size), "mass": o.mass} for o in self.objects}}


BLOCK = Body("object0", "box", (0.025, 0.025, 0.025), mass=2.0, friction=1.0)
PUCK = Body("object0", "cylinder", (0.025, 0.02), mass=2.0, friction=0.1)

SCENES = {
    "empty": Scene("empty", (0.0, 0.0), (0.0, 0.0), 1.0),
    # FetchPush / FetchPickAndPlace: 0.5 x 0.7 m table, a 5 cm, 2 kg block (friction 1)
    "table": Scene("table", (-0.05, 0.0), (0.25, 0.35), 1.0, (BLOCK,)),
    # FetchSlide: 1.25 x 0.9 m low-friction table (0.1), a 2 kg puck (r 2.5 cm, 4 cm high, friction 0.1)
    "slide_table": Scene("slide_table", (0.311, 0.0), (0.625, 0.45), 0.1, (PUCK,)),
}
