"""A simulator backend over a kernel (`OneRobot` / `ManyRobots` or a physics kernel built on them).

The kernel does the work; the backend adds its spec and settings. The kernel's methods are bound
onto the instance once, so the server calls them every step with no layer between, unless a
subclass overrides one (then its own runs).
"""
from __future__ import annotations

from robot_env.backends.interface import Backend

_BOUND = ("reset", "apply", "advance", "state", "hold")


class KernelBackend(Backend):
    kernel = None  # set by the subclass's __init__, then `_bind_kernel()`

    def _bind_kernel(self) -> None:
        for name in _BOUND:
            if getattr(type(self), name) is getattr(KernelBackend, name):
                setattr(self, name, getattr(self.kernel, name))

    # Backend's abstract methods (each instance binds its kernel's over these)
    def reset(self, seed, options, robots=None):
        return self.kernel.reset(seed, options, robots)

    def apply(self, command, robots=None):
        return self.kernel.apply(command, robots)

    def advance(self, dt):
        return self.kernel.advance(dt)

    def state(self):
        return self.kernel.state()

    def hold(self):
        return self.kernel.hold()

    def __getattr__(self, name):  # the kernel's own state (q, ctl, target, rng, ...) for tests and tools
        if name == "kernel":
            raise AttributeError(name)
        return getattr(self.kernel, name)
