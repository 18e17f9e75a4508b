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

Holes: a frame whose latest state (or image) is older than `HOLE` × the stream's usual interval
(at least one frame period) would repeat stale data; the episode ends before it and the rest is
left out, said in `skipped`.
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
    ended_early: str = ""

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


def _segments(states: list, commands: list) -> list[tuple[int, int]]:
    """[start, end) state index ranges of the episodes (see the module doc)."""
    resets = sorted(c["ta"] for c in commands if c.get("op") == "reset")
    bounds = [0]
    r = 0
    for i in range(1, len(states)):
        prev, s = states[i - 1], states[i]
        cut = False
        while r < len(resets) and resets[r] <= s["ts"]:
            if resets[r] > prev["ts"]:
                cut = True
            r += 1
        if cut or s["seq"] <= prev["seq"] or s.get("time", 0.0) < prev.get("time", 0.0) - EPS:
            bounds.append(i)
    bounds.append(len(states))
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


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
    must be there in every frame, an episode without them is skipped). Returns (episodes, what was
    skipped and why)."""
    skipped: list[str] = []
    if rec.batch is not None:
        return [], [f"{rec.path}: a batched server's recording ({rec.batch} robots per state) is not exported "
                    "(one robot per dataset episode is not implemented yet)"], []
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
    for n, (a, b) in enumerate(segs):
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
        ok = (j >= 0) & np.isfinite(stamps)
        if (~ok).sum():
            skipped.append(f"{rec.path}: {int((~ok).sum())} image(s) of camera {cam!r} stamped before any state "
                           "left out")
        idx = order[np.where(ok, j, 0)]
        placed[cam] = [(int(seg_of[i]), time[i], m) for i, m, good in zip(idx, range(len(msgs)), ok) if good]
    out = []
    short = 0
    for n, (a, b) in enumerate(segs):
        where = f"{rec.path} episode {n} (states {states[a]['seq']}..{states[b - 1]['seq']})"
        t = time[a:b]
        t0, t1 = t[0], t[-1]
        count = int(np.floor((t1 - t0) * fps + 1e-6)) + 1
        grid = t0 + np.arange(count) / fps
        k = np.searchsorted(t, grid + EPS, side="right") - 1  # latest state at or before each frame
        limit = HOLE * max(1.0 / fps, _usual(np.diff(t)))
        stale = grid - t[k] > limit + EPS
        if count < MIN_FRAMES:  # e.g. the recorder's first sample, before the first reset
            short += 1
            continue
        ended = ""
        if stale.any():
            cut = int(np.argmax(stale))
            ended = (f"{where}: no state for {grid[cut] - t[k[cut]]:.3f} s at t = {grid[cut] - t0:.3f} s "
                     f"(frame {cut}); the {count - cut} frames from there on are left out")
            count = cut
        images = {}
        for cam in cameras:
            mine = [(tt, m) for s, tt, m in placed[cam] if s == n]
            if not mine:
                images = None
                skipped.append(f"{where}: no images of camera {cam!r}; the episode is skipped")
                break
            it = np.array([tt for tt, _ in mine])
            im = np.array([m for _, m in mine])
            j = np.searchsorted(it, grid[:count] + EPS, side="right") - 1
            if count and j[0] < 0:
                first = int(np.argmax(j >= 0)) if (j >= 0).any() else count
                if first >= count:
                    images = None
                    skipped.append(f"{where}: camera {cam!r} has no image before the episode's end; "
                                   "the episode is skipped")
                    break
                # the episode starts with its first image: frames before it have nothing to show
                skipped.append(f"{where}: camera {cam!r}'s first image comes at t = {it[0] - t0:.3f} s; "
                               f"{first} frame(s) before it are left out")
                grid, k, j, count = grid[first:], k[first:], j[first:], count - first
                for c in images:  # earlier cameras' indices lose the same frames
                    images[c] = images[c][first:]
            ilimit = HOLE * max(1.0 / fps, _usual(np.diff(it)))
            istale = grid[:count] - it[np.maximum(j, 0)] > ilimit + EPS
            if istale.any():
                cut = int(np.argmax(istale))
                ended = (f"{where}: no image of camera {cam!r} for {grid[cut] - it[j[cut]]:.3f} s at "
                         f"t = {grid[cut] - t0:.3f} s; the {count - cut} frames from there on are left out")
                count = cut
                for c in images:
                    images[c] = images[c][:count]
            images[cam] = im[j[:count]]
        if images is None:
            continue
        if ended:
            skipped.append(ended)
        if count < MIN_FRAMES:
            short += 1
            continue
        kk = k[:count] + a
        nxt = np.append(kk[1:], kk[-1])  # the targets in force at the next frame
        out.append(Episode(rec.path, n, fps, q[kk], target[nxt], {c: v.tolist() for c, v in images.items()},
                           messages, ended))
    notes = [f"{rec.path}: {short} stretch(es) of states shorter than {MIN_FRAMES} frames (e.g. the recorder's "
             "first sample, before the first reset) are not episodes"] if short else []
    return out, skipped, notes
