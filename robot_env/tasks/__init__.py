"""Tasks as data: what an episode asks of a robot, on the client, over any server that can carry it."""
from .base import BoundTask, Task, TaskNeeds
from .fetch import PICK_AND_PLACE, PUSH, REACH, SLIDE, FetchTask

__all__ = ["BoundTask", "FetchTask", "PICK_AND_PLACE", "PUSH", "REACH", "SLIDE", "Task", "TaskNeeds"]
