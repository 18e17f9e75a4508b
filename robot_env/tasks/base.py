"""What a task is: data plus batch-first functions on the client, numpy only.

A task says what it needs from a server (`TaskNeeds`: channels, objects, cameras, scene), and,
bound to a server's spec (`Task.bind`), builds its spaces, the reset options and goals of an
episode, maps actions to command channels, builds observations from states, and computes reward
and success on batches (HER relabels with `compute_reward`). The server never learns what the task
is: the same server runs any task its spec can carry. Every function takes rows (one per robot);
the one-robot env uses the `*_one` fast paths, which give the same numbers without numpy's
per-call cost on a handful of values.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class TaskNeeds:
    """What a task needs a server to offer; checked against its `hello` before anything moves."""

    channels: frozenset
    objects: tuple = ()  # object names whose pose and velocities the task reads
    cameras: tuple = ()
    scene: str | None = None
    reset_options: frozenset = frozenset()  # e.g. where an object starts

    def missing(self, spec: dict) -> list[str]:
        """What `spec` (a hello's `spec`) lacks, each as a phrase; empty when the server will do."""
        out = []
        chans = set(spec.get("channels") or ())
        lack = sorted(self.channels - chans)
        if lack:
            out.append(f"command channel(s) {', '.join(lack)} (it offers {', '.join(sorted(chans)) or 'none'})")
        objs = spec.get("objects") or {}
        lack = [o for o in self.objects if o not in objs]
        if lack:
            out.append(f"object(s) {', '.join(lack)} in its state (it has {', '.join(objs) or 'no objects'})")
        cams = spec.get("cameras") or {}
        lack = [c for c in self.cameras if c not in cams]
        if lack:
            out.append(f"camera(s) {', '.join(lack)} (it has {', '.join(cams) or 'no cameras'})")
        opts = set(spec.get("reset_options") or ())
        lack = sorted(self.reset_options - opts)
        if lack:
            out.append(f"reset option(s) {', '.join(lack)}")
        if self.scene is not None and spec.get("scene") != self.scene:
            out.append(f"scene {self.scene!r} (it runs {spec.get('scene')!r})")
        return out


class Task(abc.ABC):
    """A task's data; `bind` makes the functions that run an episode of it against one server."""

    name: str
    max_episode_steps: int

    @property
    @abc.abstractmethod
    def needs(self) -> TaskNeeds: ...

    @abc.abstractmethod
    def bound(self, info: dict) -> "BoundTask":
        """The task's functions for a server whose `hello` is `info` (its needs already checked)."""

    def bind(self, info: dict, where: str = "the server") -> "BoundTask":
        """Check what the task needs against the server's spec, then bind; a clear error otherwise."""
        spec = info.get("spec") or {}
        missing = self.needs.missing(spec)
        if missing:
            raise ConfigError(f"task {self.name} needs " + "; and ".join(missing) + f", which {where} "
                              f"({info.get('backend')} backend) does not offer. Nothing was moved")
        return self.bound(info)


class BoundTask(abc.ABC):
    """One task against one server: spaces for one robot, and batch-first functions of n rows."""

    action_space = None
    observation_space = None

    @abc.abstractmethod
    def reset_options(self, rng: np.random.Generator, n: int) -> dict:
        """Server reset options for n robots (rows), e.g. where objects start; {} when none."""

    @abc.abstractmethod
    def sample_goals(self, rng: np.random.Generator, state: dict, rows: np.ndarray) -> np.ndarray:
        """Goals (len(rows), 3) for the robots `rows` of a state just after their reset."""

    @abc.abstractmethod
    def command(self, actions: np.ndarray) -> dict:
        """Command channels (one row per action row) for actions (n, k), already clipped to the Box."""

    @abc.abstractmethod
    def observe(self, state: dict, goals: np.ndarray) -> dict:
        """The goal-env observation dict for every robot of a batched state: (N, ...) arrays."""

    @abc.abstractmethod
    def compute_reward(self, achieved_goal, desired_goal, info):
        """Vectorized over leading dims (HER relabels with it)."""

    @abc.abstractmethod
    def is_success(self, achieved_goal, desired_goal) -> np.ndarray: ...

    # -- one robot: the same numbers, plain floats (an env step of one robot) -------------------
    def command_one(self, action: list) -> dict:
        return {k: v[0] for k, v in self.command(np.array([action])).items()}

    def observe_one(self, state: dict, goal: np.ndarray) -> dict:
        batched = {k: (np.asarray(v)[None] if isinstance(v, np.ndarray) else v) for k, v in state.items()}
        return {k: v[0] for k, v in self.observe(batched, goal[None]).items()}

    def reward_one(self, achieved: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
        """(reward, success) for one robot."""
        return float(self.compute_reward(achieved, goal, None)), float(self.is_success(achieved, goal))
