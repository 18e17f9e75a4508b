"""Robot-env states, commands and camera frames as Rerun log calls: the one mapping that the live view
(`robot-env view`, `teleop --view`) and the recording conversion (`robot-env plot --rrd`) share, so a
live session and its recording look the same in the viewer.

`RerunLog(stream, info)` holds a `rerun.RecordingStream` and what the mapping needs from the server's
`hello` (or a recording's metadata): joint names, the scene's table and object shapes, the robot of
a batched server to show. Its calls log:

- ``/joints/<name>/position`` and ``/joints/<name>/target``: `Scalars`, one row per state;
- ``/scene`` (the robot's base frame, z up): the gripper (`Points3D`) and its recent path
  (`LineStrips3D`), the arm as polylines through its joint origins (forward kinematics of the
  measured joints, thick, and of the targets, thin), the table and objects (`Boxes3D`, a puck
  `Cylinders3D`);
- ``/camera/<name>``: `Image` (RGB) or `DepthImage` (metres);
- ``/log/mode``, ``/log/faults``, ``/log/clipped``: `TextLog` when they change; ``/log/commands``: resets;
- ``/latency/stream_ms`` (state sampled -> received), ``/latency/send_to_apply_ms`` (client sent ->
  command applied), ``/latency/frames_rtt_ms`` (the live view's frame requests).

Scalars are buffered and sent as columns (`flush`, at the latest every `max_rows` rows): one
`send_columns` call per series instead of a `log` call per value, which is most of the cost of a
state. Each row is on the timelines ``time`` (the state's server sample time `ts`, or a command's apply time
`ta`), ``seq`` (the stream's number) and ``backend_time`` (the backend's clock), never on Rerun's own
log time: a converted recording keeps its own timestamps. Values from a file are checked for shape
and finiteness here (a bad one is left out, never logged as garbage).
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

TIMELINE, SEQ, BACKEND_TIME = "time", "seq", "backend_time"
_LEVEL = {"ok": "INFO", "watchdog": "WARN", "estop": "ERROR", "fault": "ERROR"}
_POSITION_COLOR, _TARGET_COLOR = (31, 119, 180), (214, 39, 40)
_GRIPPER_COLOR, _OBJECT_COLOR, _TABLE_COLOR = (255, 160, 0), (44, 160, 44), (160, 140, 110)


def need_rerun():
    """The rerun module, or a clear error naming the extra that installs it."""
    try:
        import rerun as rr
    except ImportError:
        from .format import RecordingError
        raise RecordingError("the Rerun view needs rerun-sdk: pip install 'robot-env[view]'") from None
    return rr


def new_stream(application_id: str = "robot-env", recording_id: str | None = None):
    """A RecordingStream of its own (never the process-global one), on our timelines only."""
    rr = need_rerun()
    stream = rr.RecordingStream(application_id, recording_id=recording_id)
    rr.set_log_time_enabled(False, recording=stream)  # our timelines are the robot's stamps
    rr.set_log_tick_enabled(False, recording=stream)
    return stream


def _vec(value, n: int):
    """`value` as n finite floats, else None (a malformed or missing field is skipped, not drawn)."""
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n and np.isfinite(arr).all() else None


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class RerunLog:
    """The mapping, bound to one stream. `setup()` logs the static parts once (series styles, the
    table, object shapes, coordinates); then `state`, `command` and `frames` log as they come."""

    def __init__(self, stream, info: dict, *, robot: int = 0, trail: int = 200, path_every: int = 5,
                 max_rows: int = 4096):
        self.rr = need_rerun()
        self.stream = stream
        self.info = info or {}
        spec = self.info.get("spec") or {}
        self.robot = int(robot)
        self.num_robots = int(self.info.get("num_robots") or spec.get("num_robots") or 1)
        names = self.info.get("joint_names") or spec.get("joint_names") or []
        self.joint_names = [str(n) for n in names]
        self.paths = {}  # joint index -> its entity path's part
        self.scene_info = self.info.get("scene_info") or spec.get("scene_info") or {}
        if not isinstance(self.scene_info, dict):
            self.scene_info = {}
        self.trail: deque = deque(maxlen=max(2, int(trail)))
        self.path_every = max(1, int(path_every))  # the gripper's path is redrawn every this many states
        self.styled: set = set()  # objects whose shape and colour are logged (static, once)
        self.last_mode = self.last_faults = self.last_clipped = None
        self.states = 0  # states logged
        self.frames_logged = 0
        self._fk = self._fk_for(self.joint_names)
        self._stamp = None  # (time, seq or None, backend time or None) of the message being logged
        self._columns: dict = {}  # (entity, has seq, has backend time) -> ([time], [seq], [backend time], [value])
        self._rows = 0
        self.max_rows = int(max_rows)

    @staticmethod
    def _fk_for(names):
        """The arm's forward kinematics when the joints are the model's (the Fetch description)."""
        from ..model.description import JOINTS
        if [j.name for j in JOINTS] != list(names):
            return None
        from ..model.description import ARM, TORSO
        from ..model.kinematics import _TORSO_X, _TORSO_Z, fk_frames

        def arm_points(q):
            pos, _, origins, _ = fk_frames(float(q[TORSO]), [float(v) for v in q[ARM]])
            return [(_TORSO_X, 0.0, 0.0), (_TORSO_X, 0.0, _TORSO_Z + float(q[TORSO])), *origins, pos]
        return arm_points

    def _joint_path(self, j: int) -> str:
        path = self.paths.get(j)
        if path is None:
            name = self.joint_names[j] if j < len(self.joint_names) else f"joint{j}"
            path = self.paths[j] = "/joints/" + self.rr.escape_entity_path_part(name)
        return path

    def _row(self, value, n: int | None = None):
        """One robot's row of a state vector (a batched server sends (N, k) arrays)."""
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return None
        if arr.ndim == 2:
            if not 0 <= self.robot < arr.shape[0]:
                return None
            arr = arr[self.robot]
        if arr.ndim != 1 or (n is not None and arr.size != n):
            return None
        return arr

    # -- static -----------------------------------------------------------------------------
    def setup(self) -> None:
        rr, log = self.rr, self.stream.log
        log("/scene", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        for j in range(len(self.joint_names)):
            path = self._joint_path(j)
            log(path + "/position", rr.SeriesLines(colors=[_POSITION_COLOR], names=["position"], widths=[1.5]),
                static=True)
            log(path + "/target", rr.SeriesLines(colors=[_TARGET_COLOR], names=["target"], widths=[1.0]),
                static=True)
        # Styles once, static; each state logs only what moves (a partial update costs a tenth of a full one)
        log("/scene/gripper", rr.Points3D.from_fields(radii=[0.012], colors=[_GRIPPER_COLOR]), static=True)
        log("/scene/gripper_path", rr.LineStrips3D.from_fields(radii=[0.003], colors=[_GRIPPER_COLOR]), static=True)
        log("/scene/arm", rr.LineStrips3D.from_fields(radii=[0.012, 0.004], colors=[_POSITION_COLOR, _TARGET_COLOR]),
            static=True)
        table = self.scene_info.get("table")
        if isinstance(table, dict):
            center, half = _vec(table.get("center"), 3), _vec(table.get("half_size"), 3)
            if center is not None and half is not None:
                log("/scene/table", rr.Boxes3D(centers=[center], half_sizes=[half], colors=[_TABLE_COLOR],
                                               fill_mode="solid"), static=True)

    def blueprint(self, cameras=()):
        """A layout: the 3D scene and the cameras left, joint plots (a grid) and the logs right."""
        import rerun.blueprint as rrb
        joints = [rrb.TimeSeriesView(origin=self._joint_path(j), name=self.joint_names[j].removesuffix("_joint"))
                  for j in range(len(self.joint_names))]
        eye = rrb.EyeControls3D(position=(1.9, -1.6, 1.6), look_target=(0.45, 0.0, 0.6), eye_up=(0, 0, 1))
        left = [rrb.Spatial3DView(origin="/scene", name="scene (base frame)", eye_controls=eye)]
        if cameras:
            left.append(rrb.Horizontal(*[rrb.Spatial2DView(origin="/camera/" + c, name=c) for c in cameras]))
        right = [rrb.Grid(*joints, name="joints: position vs target") if joints else
                 rrb.TimeSeriesView(origin="/joints"),
                 rrb.Horizontal(rrb.TextLogView(origin="/log", name="mode, faults, clipped"),
                                rrb.TimeSeriesView(origin="/latency", name="latency [ms]"))]
        return rrb.Blueprint(rrb.Horizontal(rrb.Vertical(*left), rrb.Vertical(*right, row_shares=[3, 1]),
                                            column_shares=[2, 3]), collapse_panels=True)

    # -- per message ------------------------------------------------------------------------
    def _at(self, ts, seq=None, backend_time=None) -> bool:
        """Set the stream's time to this message's stamps (False: no usable time, log nothing)."""
        t = _finite(ts)
        if t is None:
            return False
        st = self.stream
        st.reset_time()
        st.set_time(TIMELINE, timestamp=t)
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
            seq = None
        if seq is not None:
            st.set_time(SEQ, sequence=seq)
        bt = _finite(backend_time)
        if bt is not None:
            st.set_time(BACKEND_TIME, duration=bt)
        self._stamp = (t, seq, bt)
        return True

    def _scalar(self, path: str, value: float) -> None:
        """One scalar at the current stamp, buffered for `flush`."""
        t, seq, bt = self._stamp
        col = self._columns.get((path, seq is not None, bt is not None))
        if col is None:
            col = self._columns[(path, seq is not None, bt is not None)] = ([], [], [], [])
        col[0].append(t)
        col[1].append(seq)
        col[2].append(bt)
        col[3].append(value)
        self._rows += 1
        if self._rows >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        """Send the buffered scalars, a column per series."""
        rr = self.rr
        columns, self._columns, self._rows = self._columns, {}, 0
        for (path, has_seq, has_bt), (t, seq, bt, v) in columns.items():
            indexes = [rr.TimeColumn(TIMELINE, timestamp=t)]
            if has_seq:
                indexes.append(rr.TimeColumn(SEQ, sequence=seq))
            if has_bt:
                indexes.append(rr.TimeColumn(BACKEND_TIME, duration=bt))
            self.stream.send_columns(path, indexes=indexes, columns=rr.Scalars.columns(scalars=v))

    def state(self, st: dict, t_recv: float | None = None) -> bool:
        """Log one state sample (its joints, the scene, mode/faults/clipped changes, stream latency)."""
        if not self._at(st.get("ts"), st.get("seq"), st.get("time")):
            return False
        rr, log = self.rr, self.stream.log
        joints = len(self.joint_names) or None  # a vector of another length is not this robot's: skipped
        q = self._row(st.get("q"), joints)
        target = self._row(st.get("target"), joints)
        for values, series in ((q, "/position"), (target, "/target")):
            if values is not None:
                for j, v in enumerate(values.tolist()):
                    if math.isfinite(v):
                        self._scalar(self._joint_path(j) + series, v)
        ee = self._row(st.get("ee"), 7)
        if ee is not None and np.isfinite(ee[:3]).all():
            self.trail.append(ee[:3].copy())
            log("/scene/gripper", rr.Points3D.from_fields(positions=ee[None, :3]))
            if len(self.trail) >= 2 and self.states % self.path_every == 0:
                log("/scene/gripper_path", rr.LineStrips3D.from_fields(strips=[np.array(self.trail)]))
        if self._fk is not None and q is not None and np.isfinite(q).all():
            # the arm measured (thick) and where its targets put it (thin)
            strips = [self._fk(q)]
            if target is not None and np.isfinite(target).all():
                strips.append(self._fk(target))
            log("/scene/arm", rr.LineStrips3D.from_fields(strips=strips))
        self._objects(st.get("objects"))
        self._changes(st)
        t = _finite(t_recv if t_recv is not None else st.get("t_recv"))
        if t is not None:
            self._scalar("/latency/stream_ms", (t - float(st["ts"])) * 1e3)
        self.states += 1
        return True

    def _objects(self, objects) -> None:
        if not isinstance(objects, dict):
            return
        rr, log = self.rr, self.stream.log
        shapes = self.scene_info.get("objects") if isinstance(self.scene_info.get("objects"), dict) else {}
        for name, o in objects.items():
            if not isinstance(o, dict):
                continue
            pos, quat = self._row(o.get("pos"), 3), self._row(o.get("quat"), 4)
            if pos is None or not np.isfinite(pos).all():
                continue
            if quat is None or not np.isfinite(quat).all() or not np.linalg.norm(quat) > 0:
                quat = np.array([0.0, 0.0, 0.0, 1.0])
            path = "/scene/objects/" + rr.escape_entity_path_part(str(name))
            shape = shapes.get(name) if isinstance(shapes.get(name), dict) else {}
            size = shape.get("size")
            kind = rr.Cylinders3D if shape.get("shape") == "cylinder" and _vec(size, 2) is not None else rr.Boxes3D
            if path not in self.styled:  # its shape, once (static): a box, a puck, or a 5 cm cube when unknown
                self.styled.add(path)
                style = dict(colors=[_OBJECT_COLOR], fill_mode="solid", labels=[str(name)])
                if kind is rr.Cylinders3D:
                    r, h = _vec(size, 2)
                    log(path, kind.from_fields(lengths=[2 * h], radii=[r], **style), static=True)
                else:
                    half = _vec(size, 3) if shape.get("shape") == "box" else None
                    log(path, kind.from_fields(half_sizes=[half if half is not None else (0.025,) * 3], **style),
                        static=True)
            log(path, kind.from_fields(centers=[pos], quaternions=[rr.Quaternion(xyzw=quat)]))

    def _changes(self, st: dict) -> None:
        """Mode, faults and clip flags as text, each when it changes (not once per sample)."""
        rr, log = self.rr, self.stream.log
        mode = str(st.get("mode", "?"))
        if mode != self.last_mode:
            extra = f" ({st['busy']})" if st.get("busy") else ""
            log("/log/mode", rr.TextLog(f"mode {mode}{extra}", level=_LEVEL.get(mode, "WARN")))
            self.last_mode = mode
        faults = st.get("faults") or []
        text = "; ".join(_fault_text(f) for f in faults) if isinstance(faults, list) else str(faults)
        if text != self.last_faults:
            if text or self.last_faults is not None:
                log("/log/faults", rr.TextLog(f"faults: {text}" if text else "faults cleared",
                                              level="ERROR" if text else "INFO"))
            self.last_faults = text
        clipped = st.get("clipped") or {}
        if isinstance(clipped, dict):
            flags = sorted(str(k) for k, robots in clipped.items()
                           if self.num_robots == 1 or not isinstance(robots, list) or self.robot in robots)
        else:
            flags = sorted(str(k) for k in clipped) if isinstance(clipped, list) else []
        text = ", ".join(flags)
        if text != self.last_clipped:
            if text:
                log("/log/clipped", rr.TextLog(f"clipped: {text}", level="WARN"))
            self.last_clipped = text

    def command(self, msg: dict) -> bool:
        """Log one applied command: its send -> apply latency; a reset as text (an episode starts)."""
        ta = _finite(msg.get("ta"))
        after = msg.get("after")
        if ta is None or not self._at(ta, after if isinstance(after, int) else None):
            return False
        rr, log = self.rr, self.stream.log
        t = _finite(msg.get("t"))
        if t is not None:
            self._scalar("/latency/send_to_apply_ms", (ta - t) * 1e3)
        if msg.get("op") == "reset":
            log("/log/commands", rr.TextLog(f"reset (seed {msg.get('seed')})", level="INFO"))
        return True

    def frames(self, frames: dict, ts, seq=None, backend_time=None) -> int:
        """Log camera frames ({name: (h, w, c) or (n, h, w, c) array}) at a state's stamps; the count logged."""
        if not frames or not self._at(ts, seq, backend_time):
            return 0
        rr, log = self.rr, self.stream.log
        n = 0
        for name, arr in frames.items():
            arr = np.asarray(arr)
            if arr.ndim == 4:
                if not 0 <= self.robot < arr.shape[0]:
                    continue
                arr = arr[self.robot]
            if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
                continue
            path = "/camera/" + rr.escape_entity_path_part(str(name))
            if arr.dtype == np.uint8 and arr.shape[2] in (1, 3):
                log(path, rr.Image(arr if arr.shape[2] == 3 else arr[:, :, 0]))
            elif arr.dtype.kind == "f" and arr.shape[2] == 1:
                log(path, rr.DepthImage(arr[:, :, 0].astype(np.float32, copy=False), meter=1.0))
            else:
                continue
            n += 1
        self.frames_logged += n
        return n

    def latency(self, name: str, seconds: float, ts) -> None:
        """One latency sample (s) on ``/latency/<name>_ms`` at time `ts`."""
        v = _finite(seconds)
        if v is not None and self._at(ts):
            self._scalar(f"/latency/{name}_ms", v * 1e3)


def _fault_text(f) -> str:
    if isinstance(f, dict):
        where = f.get("joint") or (f"servo {f['servo']}" if f.get("servo") is not None else "")
        return f"{f.get('code', 'fault')}{' ' + str(where) if where else ''}: {f.get('message', '')}"
    return str(f)
