"""Camera frames off the plant: RGB (uint8) and depth (float32 metres), headless on the CPU.

Renderers are made on the first request, so a server that is never asked for a frame never opens an
OpenGL context. `MUJOCO_GL` picks the context: `egl` (Mesa's, installed here) unless the user chose;
`osmesa` needs Debian's libosmesa6; `glfw` needs a display.
"""
from __future__ import annotations

import os

import numpy as np

from robot_env.backends.spec import CameraSpec
from robot_env.errors import RequestError

CAMERAS = ("head", "external", "wrist")  # the model's cameras; "<name>_depth" is its depth image
GL_HINT = ("MuJoCo could not open an OpenGL context for rendering ({err}). Headless, set MUJOCO_GL=egl "
           "(Mesa's EGL) or MUJOCO_GL=osmesa (apt-get install libosmesa6) before the server starts")


def camera_specs(names, height: int, width: int, depth: bool, far: float | None = None) -> dict:
    """`far`: the depth renderer's far plane (m), the most a depth pixel holds."""
    out = {}
    for n in names:
        out[n] = CameraSpec(height, width, 3, "uint8")
        if depth:
            out[f"{n}_depth"] = CameraSpec(height, width, 1, "float32", far)
    return out


class Cameras:
    def __init__(self, plant, specs: dict):
        self.plant = plant
        self.specs = specs
        self._renderers: dict = {}

    def _renderer(self, spec: CameraSpec, depth: bool):
        key = (spec.height, spec.width, depth)
        r = self._renderers.get(key)
        if r is None:
            os.environ.setdefault("MUJOCO_GL", "egl")
            import mujoco
            try:
                r = mujoco.Renderer(self.plant.model, spec.height, spec.width)
            except Exception as exc:  # no context: say which settings give one
                raise RequestError("no_renderer", GL_HINT.format(err=f"{type(exc).__name__}: {exc}")) from None
            if depth:
                r.enable_depth_rendering()
            self._renderers[key] = r
        return r

    def render(self, names, robots=None) -> dict:
        """name -> (n, h, w, c) frames of robots `robots` (None: all), in request order."""
        rows = range(self.plant.n) if robots is None else [int(i) for i in robots]
        out = {}
        for name in names:
            spec = self.specs[name]
            depth = name.endswith("_depth")
            cam = name[:-6] if depth else name
            r = self._renderer(spec, depth)
            frames = np.empty((len(rows), spec.height, spec.width, spec.channels), np.dtype(spec.dtype))
            for k, i in enumerate(rows):
                r.update_scene(self.plant.view(i), camera=cam)
                img = r.render()
                frames[k] = img[..., None] if depth else img
            out[name] = frames
        return out

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
