"""A recording cut into episodes and resampled onto a fixed frame grid: what a training dataset holds
(`robot-env export --lerobot`), independent of any dataset format.

Episodes. An episode starts at a recorded reset (the first state sampled at or after the reset's
apply time), where the server restarted (the stream's ``seq`` went back) and where the backend's
clock went back (a reset whose record was lost); a recording that never resets (a teleop session)
is one episode.

Time axis: the backend's clock (the state's ``time``: simulated time on a lockstep server, the
driver's clock on hardware), not the wall clock, which on a lockstep server says how fast the
client stepped, not when anything happened.

Resampling, honestly: frame k of an episode is at t0 + k/fps (t0: its first state) and takes the
latest state sampled at or before that instant (a zero-order hold: what a controller running at
fps would have read; nothing is interpolated, so every value in the dataset was measured). Camera
images likewise: each recorded image is placed on the backend clock at the state sampled last
before it (`Recorder` stamps a frame with its state's sample time, `RecordEpisodes` with the time
it received it, both at or after that state's), and a frame takes the latest image at or before
it. ``action[k]`` is the joint targets the safety layer accepted for the command that followed
frame k, read as the state's ``target`` at frame k+1 (the last frame: its own): a fixed-width
vector, the same joints as the observation, whichever channel (`ee_delta`, `arm_position`,
teleop's jogs) the command came on.

An episode's frames start once every stream (the states, each camera) has something to show, and
end with its last state. The stretch before a recording's first reset is not an episode (the
recorder joined before the first reset, or the robot idled before it); a recording without
resets is one. Holes: a frame whose latest sample of a stream (states, or a camera's images) is older than
`HOLE` × the stream's usual interval (at least one frame period) falls in a hole (lost samples, a
stalled server) and would repeat stale data; the episode ends before it and the rest is left out,
said in `skipped`. So one lost sample is held over (a sample one period old, as jitter makes
them on a realtime server), two are a hole.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .images import CAMERA_TOPIC, decode_frame

HOLE = 1.5  # a stream interval longer than this many usual ones (or frame periods) is a hole
EPS = 2e-5  # s: stamps closer than this are the same instant (RawImage keeps ns; float64 epochs ~0.2 µs)
MIN_FRAMES = 2


@dataclass
class Episode:
    """One episode on the frame grid: `state` and `action` (n, J) float32, `images` {camera: list of
    n indices into `frames[camera]`, the recorded image messages}, decoded on demand by `image`."""
    source: str
    number: int  # the episode's position among the recording's episodes
    fps: int
    state: np.ndarray
    action: np.ndarray
    images: dict = field(default_factory=dict)
    messages: dict = field(default_factory=dict)  # camera -> the recording's image messages

    @property
    def length(self) -> int:
        return len(self.state)

    @property
    def timestamps(self) -> np.ndarray:
        return (np.arange(self.length) / self.fps).astype(np.float32)

    def image(self, camera: str, k: int) -> np.ndarray:
        return decode_frame(self.messages[camera][self.images[camera][k]])


def _stamp(msg: dict) -> float:
    ts = msg.get("timestamp") or {}
    try:
        return float(ts.get("sec", 0)) + float(ts.get("nsec", 0)) * 1e-9
    except (TypeError, ValueError):
        return float("nan")


def _segments(states: list, commands: list) -> list[tuple[int, int, str]]:
    """[start, end) state index ranges of the episodes (see the module doc), and what began each:
    "start" (the recording's), "reset", "restart" (the server's) or "clock" (it went back)."""
    resets = sorted(c["ta"] for c in commands if c.get("op") == "reset")
    bounds, whys = [0], ["start"]
    r = 0
    for i in range(1, len(states)):
        prev, s = states[i - 1], states[i]
        reset = False
        while r < len(resets) and resets[r] <= s["ts"]:
            reset = reset or resets[r] > prev["ts"]
            r += 1
        why = ("reset" if reset else "restart" if s["seq"] <= prev["seq"] else
               "clock" if s["time"] < prev["time"] - EPS else None)
        if why:
            bounds.append(i)
            whys.append(why)
    bounds.append(len(states))
    return [(a, b, w) for a, b, w in zip(bounds, bounds[1:], whys)]


def _usual(dt: np.ndarray) -> float:
    dt = dt[dt > EPS]
    return float(np.median(dt)) if len(dt) else 0.0


def _usable(msg: dict, shape) -> bool:
    """An RGB image of `shape` (h, w, 3) whose pixels add up, checked without decoding them."""
    try:
        h, w = int(msg["height"]), int(msg["width"])
        n = len(msg["data"])
    except (KeyError, TypeError, ValueError):
        return False
    return msg.get("encoding") == "rgb8" and (h, w, 3) == tuple(shape) and n == 4 * -(-(h * w * 3) // 3)


def image_shape(rec, camera: str):
    """The (h, w, 3) of a camera's RGB images in a recording (the commonest one), or None."""
    from collections import Counter
    shapes = Counter()
    for m in rec.events.get(CAMERA_TOPIC + camera, []):
        try:
            if m.get("encoding") == "rgb8":
                shapes[(int(m["height"]), int(m["width"]), 3)] += 1
        except (KeyError, TypeError, ValueError):
            continue
    return shapes.most_common(1)[0][0] if shapes else None


def episodes(rec, fps: int, cameras: dict) -> tuple[list[Episode], list[str], list[str]]:
    """The recording's episodes on a grid of `fps`, with images of `cameras` ({name: (h, w, 3)}: each
    must be there in every frame: an episode without them is left out). Returns (episodes, what was
    left out and why, notes on what is not an episode but lost nothing)."""
    skipped: list[str] = []
    notes: list[str] = []
    if rec.batch is not None:
        why = (f"{rec.path}: a batched server's recording ({rec.batch} robots per state) is not exported "
               "(one robot per dataset episode is not implemented yet)")
        return [], [why], []
    states = [s for s in rec.states if isinstance(s.get("time"), (int, float)) and s.get("target") is not None]
    if len(states) < len(rec.states):
        skipped.append(f"{rec.path}: {len(rec.states) - len(states)} states without a clock or targets left out")
    if not states:
        return [], skipped + [f"{rec.path}: no states to export"], []
    ts = np.array([s["ts"] for s in states])
    time = np.array([float(s["time"]) for s in states])
    q = np.array([s["q"] for s in states], dtype=np.float32)
    target = np.array([s["target"] for s in states], dtype=np.float32)
    segs = _segments(states, rec.commands)
    seg_of = np.empty(len(states), dtype=np.int64)
    for n, (a, b, _) in enumerate(segs):
        seg_of[a:b] = n
    # every camera's images: (segment, backend time, message index), in order
    placed: dict[str, list] = {}
    messages: dict[str, list] = {}
    order = np.argsort(ts, kind="stable")
    for cam in cameras:
        every = rec.events.get(CAMERA_TOPIC + cam, [])
        msgs = [m for m in every if _usable(m, cameras[cam])]
        if len(msgs) < len(every):
            skipped.append(f"{rec.path}: {len(every) - len(msgs)} image(s) of camera {cam!r} are not "
                           f"{cameras[cam][1]}x{cameras[cam][0]} RGB (rgb8) images that add up; left out")
        messages[cam] = msgs
        stamps = np.array([_stamp(m) for m in msgs], dtype=float)
        j = np.searchsorted(ts[order], stamps + EPS, side="right") - 1
        finite = np.isfinite(stamps)
        ok = (j >= 0) & finite
        early = int(((j < 0) & finite).sum())
        if early:  # captured a moment before the recorder's first state: outside every episode, not damage
            notes.append(f"{rec.path}: {early} image(s) of camera {cam!r} captured before the first state are "
                         "not in an episode")
        if (~finite).sum():
            skipped.append(f"{rec.path}: {int((~finite).sum())} image(s) of camera {cam!r} without a valid "
                           "stamp left out")
        idx = order[np.where(ok, j, 0)]
        placed[cam] = [(int(seg_of[i]), time[i], m) for i, m, good in zip(idx, range(len(msgs)), ok) if good]
    out: list[Episode] = []
    number = -1  # the recording's episodes, counted from 0
    for n, (a, b, why) in enumerate(segs):
        t = time[a:b]
        span = f"states {states[a]['seq']}..{states[b - 1]['seq']}"
        if why == "start" and len(segs) > 1 and any(w == "reset" for _, _, w in segs):
            if t[-1] - t[0] >= 1.0 / fps:  # more than the recorder's first sample
                notes.append(f"{rec.path}: the {t[-1] - t[0]:.2f} s ({span}) before the first reset are not an episode")
            continue
        number += 1
        where = f"{rec.path} episode {number} ({span})"
        mine = {}
        for cam in cameras:
            got = sorted(((tt, m) for sg, tt, m in placed[cam] if sg == n), key=lambda x: x[0])
            if not got:
                break
            mine[cam] = (np.array([tt for tt, _ in got]), np.array([m for _, m in got]))
        else:
            cam = None
        if cam is not None:
            skipped.append(f"{where}: no images of camera {cam!r}; the episode is left out")
            continue
        # the episode starts once every stream has something to show
        t0 = max([t[0]] + [it[0] for it, _ in mine.values()])
        if t0 - t[0] > HOLE / fps:
            late = max(mine, key=lambda c: mine[c][0][0])
            skipped.append(f"{where}: camera {late!r}'s first image comes {t0 - t[0]:.3f} s after the first state; "
                           "the episode starts there")
        count = int(np.floor((t[-1] - t0) * fps + 1e-6)) + 1 if t[-1] >= t0 else 0
        grid = t0 + np.arange(count) / fps
        streams = [("state", t)] + [(f"image of camera {c!r}", it) for c, (it, _) in mine.items()]
        picks = []
        for what, st in streams:
            k = np.searchsorted(st, grid + EPS, side="right") - 1  # the latest at or before each frame
            picks.append(k)
            limit = HOLE * max(1.0 / fps, _usual(np.diff(st)))
            kc = k[:count]
            stale = grid[:count] - st[kc] > limit + EPS  # its latest sample is too old: inside a hole
            if stale.any():
                cut = int(np.argmax(stale))
                nxt = st[kc[cut] + 1] - st[kc[cut]] if kc[cut] + 1 < len(st) else None
                hole = f"for {nxt:.3f} s" if nxt is not None else "after its last one"
                skipped.append(f"{where}: no {what} {hole} from t = {st[kc[cut]] - t0:.3f} s (a hole in the "
                               f"recording); the {count - cut} frames from frame {cut} on are left out")
                count = cut
        if count < MIN_FRAMES:
            skipped.append(f"{where}: fewer than {MIN_FRAMES} frames; left out")
            continue
        kk = picks[0][:count] + a
        nxt = np.append(kk[1:], kk[-1])  # the targets in force at the next frame (the last: its own)
        images = {c: mine[c][1][picks[i + 1][:count]].tolist() for i, c in enumerate(mine)}
        out.append(Episode(rec.path, number, fps, q[kk], target[nxt], images, messages))
    return out, skipped, notes
