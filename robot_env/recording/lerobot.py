"""`export_lerobot`: recordings -> a LeRobotDataset in LeRobot's v3.0 layout, written with pyarrow and
PyAV (no LeRobot, no torch: LeRobot's own `LeRobotDataset` loader reads the result).

What is written (LeRobot v0.6's `datasets/utils.py`, `dataset_writer.py`, `dataset_metadata.py`,
`compute_stats.py`):

- ``data/chunk-000/file-000.parquet``: one row per frame: ``observation.state`` and ``action``
  (fixed-size float32 lists of the joints), ``timestamp`` (float32, s from the episode's start),
  ``frame_index``, ``episode_index``, ``index`` (over the dataset), ``task_index`` (int64); the
  Hugging Face `datasets` feature schema in the file's metadata, as `datasets` writes it. A file
  holds up to `data_mb` MB, then the next file (``file-001``) starts; 1000 files a chunk.
- ``videos/observation.images.<camera>/chunk-000/file-000.mp4``: the camera's frames of every
  episode one after the other at fps (pts k/fps), AV1 (libsvtav1, LeRobot's default) where PyAV's
  FFmpeg has it, else H.264; an episode's frames are at [from_timestamp, to_timestamp) of its file.
- ``meta/info.json`` (codebase_version "v3.0", fps, features with dtype/shape/names, totals,
  chunk and file sizes, path templates), ``meta/tasks.parquet`` (the task strings, indexed by
  task, with their task_index, as pandas writes it: pandas' schema metadata names the index),
  ``meta/episodes/chunk-000/file-000.parquet`` (per episode: index, tasks, length, data and video
  files and spans, ``stats/<feature>/<stat>``),
  ``meta/stats.json`` (the dataset's statistics: min, max, mean, std, count and the 1/10/50/90/99 %
  quantiles; images per channel in [0, 1], shape (3, 1, 1)). Per-episode quantiles are exact
  (numpy; an image's over an even sample of its pixels); the dataset's are LeRobot's aggregate
  (count-weighted means of the episodes'), as its `aggregate_stats` computes them.

Nothing is written in place: the dataset is built in a sibling directory and renamed to `out` at the
end, so a failed export leaves nothing behind, and an `out` that exists is refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .format import RecordingError

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's DEFAULT_CHUNK_SIZE)
DATA_MB = 100  # LeRobot's DEFAULT_DATA_FILE_SIZE_IN_MB
VIDEO_MB = 200  # LeRobot's DEFAULT_VIDEO_FILE_SIZE_IN_MB
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 100  # frames per episode that image statistics are computed from (evenly spaced)
IMAGE_QUANTILE_PIXELS = 100_000  # pixels per episode and channel that image quantiles are computed from
# Codecs in LeRobot's order of preference that PyAV can be asked for; the first this FFmpeg encodes wins.
CODECS = ("libsvtav1", "libaom-av1", "libx264", "h264")
CODEC_OPTIONS = {"libsvtav1": {"g": "2", "crf": "30", "preset": "12"}, "libaom-av1": {"g": "2", "crf": "30",
                 "cpu-used": "8"}, "libx264": {"g": "2", "crf": "23", "preset": "veryfast"}, "h264": {"g": "2"}}
DEFAULT_TASK = "robot-env demonstration"
INDEX_FEATURES = {  # LeRobot's DEFAULT_FEATURES, in its order
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def _need():
    import importlib.util
    lack = [m for m in ("pyarrow", "av") if importlib.util.find_spec(m) is None]
    if lack:
        raise RecordingError(f"the LeRobot export needs {', '.join(lack)}: pip install 'robot-env[lerobot]'")


def pick_codec(wanted: str | None = None) -> str:
    """The video encoder: `wanted`, or the first of `CODECS` this PyAV's FFmpeg has."""
    import av
    have = av.codecs_available
    for name in ([wanted] if wanted else CODECS):
        if name in have:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:
                continue
    raise RecordingError(f"no video encoder {'named ' + repr(wanted) if wanted else 'of ' + ', '.join(CODECS)} "
                         "in this PyAV's FFmpeg")


@dataclass
class ExportResult:
    """What `export_lerobot` wrote, and what it left out (`skipped`: one line each)."""
    out: str
    episodes: int = 0
    frames: int = 0
    cameras: list = field(default_factory=list)
    codec: str = ""
    fps: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what is not exported but lost nothing (a lone first sample)
    files_read: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        cams = f", camera(s) {', '.join(self.cameras)} ({self.codec})" if self.cameras else ", no cameras"
        return (f"wrote {self.episodes} episode(s), {self.frames} frames at {self.fps} fps{cams} to {self.out} "
                f"from {self.files_read} recording(s) in {self.seconds:.2f} s ({self.frames_per_s:.0f} frames/s)"
                + (f"; {len(self.skipped)} thing(s) left out" if self.skipped else ""))


# -- statistics (LeRobot's compute_stats: per feature, over the frames of one episode) -----------------
def _stats(x: np.ndarray) -> dict:
    """(n, d) values -> min, max, mean, std, count and quantiles per column (d,), as float64."""
    x = np.asarray(x, dtype=np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0)):
        out[f"q{round(q * 100):02d}"] = v
    return out


def _image_stats(frames: np.ndarray) -> dict:
    """(n, h, w, 3) uint8 frames -> per-channel statistics in [0, 1], each of shape (3, 1, 1): min, max,
    mean and std over every pixel; quantiles over an even sample of `IMAGE_QUANTILE_PIXELS` of them
    (sorting all is most of an export's time; LeRobot's own are histogram estimates on downsampled frames)."""
    ch = np.ascontiguousarray(frames.reshape(-1, 3).T)  # (3, pixels) uint8: reductions along rows are fast
    mean = ch.mean(axis=1, dtype=np.float64)
    var = np.array([np.square(c, dtype=np.float64).mean() for c in ch])  # E[x²], exact for 8-bit values
    out = {"min": ch.min(axis=1) / 255.0, "max": ch.max(axis=1) / 255.0, "mean": mean / 255.0,
           "std": np.sqrt(np.maximum(var - mean ** 2, 0.0)) / 255.0}
    sample = ch[:, ::max(1, ch.shape[1] // IMAGE_QUANTILE_PIXELS)] / 255.0
    for q, v in zip(QUANTILES, np.quantile(sample, QUANTILES, axis=1)):
        out[f"q{round(q * 100):02d}"] = v
    out = {k: np.asarray(v, dtype=np.float64).reshape(3, 1, 1) for k, v in out.items()}
    out["count"] = np.array([len(frames)])
    return out


def _aggregate(per_episode: list[dict]) -> dict:
    """LeRobot's `aggregate_feature_stats`: exact min/max/mean/std, count-weighted quantiles."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    total = counts.sum()
    means = np.stack([s["mean"] for s in per_episode])
    w = counts.reshape((-1,) + (1,) * (means.ndim - 1))
    mean = (means * w).sum(0) / total
    var = ((np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
    out = {"min": np.min(np.stack([s["min"] for s in per_episode]), 0),
           "max": np.max(np.stack([s["max"] for s in per_episode]), 0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for key in per_episode[0]:
        if key.startswith("q") and key[1:].isdigit():
            out[key] = (np.stack([s[key] for s in per_episode]) * w).sum(0) / total
    return out


# -- the files -----------------------------------------------------------------------------------
def _hf_features(features: dict) -> dict:
    """The Hugging Face `datasets` feature schema of the parquet columns (what `datasets` writes into
    a parquet file's metadata): vectors are fixed-length Lists, (1,) features plain Values."""
    out = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        value = {"dtype": ft["dtype"], "_type": "Value"}
        out[key] = value if ft["shape"] == [1] else {"feature": value, "length": ft["shape"][0], "_type": "List"}
    return out


def _size(path) -> int:
    """Bytes written so far (an encoder that holds its first packets back has not created the file yet)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class _Rolling:
    """Chunk/file indices of a file series that starts a new file once one reaches `limit_mb`."""

    def __init__(self, limit_mb: float):
        self.limit = limit_mb * 1024 * 1024
        self.chunk = self.file = 0

    def next(self) -> None:
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0


class _DataFiles:
    def __init__(self, root: Path, features: dict, limit_mb: float):
        import pyarrow as pa
        self.pa, self.root, self.roll = pa, root, _Rolling(limit_mb)
        meta = {b"huggingface": json.dumps({"info": {"features": _hf_features(features)}}).encode()}
        fields = []
        for key, ft in features.items():
            if ft["dtype"] == "video":
                continue
            t = pa.float32() if ft["dtype"] == "float32" else pa.int64()
            fields.append(pa.field(key, t if ft["shape"] == [1] else pa.list_(t, ft["shape"][0])))
        self.schema = pa.schema(fields, metadata=meta)
        self.writer = None
        self.path = None

    def write(self, columns: dict) -> tuple[int, int]:
        """Append one episode's rows; returns the (chunk, file) they went to."""
        import pyarrow.parquet as pq
        pa = self.pa
        if self.writer is not None and _size(self.path) >= self.roll.limit:
            self.close()
            self.roll.next()
        if self.writer is None:
            self.path = self.root / DATA_PATH.format(chunk_index=self.roll.chunk, file_index=self.roll.file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="snappy", use_dictionary=True)
        arrays = []
        for f in self.schema:
            v = columns[f.name]
            if pa.types.is_fixed_size_list(f.type):
                flat = pa.array(np.ascontiguousarray(v, dtype=np.float32).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
            else:
                arrays.append(pa.array(v, type=f.type))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        # the size check above needs what is written so far on disk: close the row group now
        return self.roll.chunk, self.roll.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoFiles:
    """One camera's mp4 series: frames appended at pts = their index in the file, time base 1/fps."""

    def __init__(self, root: Path, key: str, fps: int, codec: str, shape, limit_mb: float):
        self.root, self.key, self.fps, self.codec, self.shape = root, key, fps, codec, shape
        self.roll = _Rolling(limit_mb)
        self.container = self.stream = None
        self.count = 0  # frames in the open file
        self.path = None

    def _open(self) -> None:
        import av
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (it prints its banner to stderr)
        self.path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.roll.chunk,
                                                  file_index=self.roll.file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(self.codec, rate=self.fps, options=CODEC_OPTIONS.get(self.codec, {}))
        self.stream.width, self.stream.height = self.shape[1], self.shape[0]
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, self.fps)
        self.count = 0

    def begin_episode(self) -> tuple[int, int, float]:
        """Where the next episode goes: (chunk, file, from_timestamp)."""
        if self.container is not None and _size(self.path) >= self.roll.limit:
            self.close()
            self.roll.next()
        if self.container is None:
            self._open()
        return self.roll.chunk, self.roll.file, self.count / self.fps

    def add(self, frame: np.ndarray) -> None:
        import av
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.count
        vf.time_base = Fraction(1, self.fps)
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
            self.container = None


def _video_info(path: Path, codec: str) -> dict:
    """The ``info`` of a video feature, as LeRobot's `get_video_info` probes it."""
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.fps": int(s.base_rate or s.average_rate),
                "video.channels": 3, "has_audio": False}
    for k, v in CODEC_OPTIONS.get(codec, {}).items():
        info.setdefault(f"video.{k}", int(v) if v.isdigit() else v)
    info["is_depth_map"] = False
    return info


def _plain(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def export_lerobot(paths, out, *, fps: int | None = None, task: str | None = None, cameras=None,
                   codec: str | None = None, robot_type: str | None = None, data_mb: float = DATA_MB,
                   video_mb: float = VIDEO_MB) -> ExportResult:
    """Export recordings (MCAP files) to a LeRobotDataset v3.0 at `out` (a directory that must not exist).

    `fps`: the frame grid (default: the first recording's control rate); `task`: the episodes' task
    text; `cameras`: the cameras to put in (default: every camera recorded; [] for none). What is
    damaged or incomplete is left out and listed in the result's `skipped`; RecordingError when
    nothing at all could be exported (and then nothing is written)."""
    _need()
    from .episodes import episodes as cut_episodes
    from .episodes import image_shape
    from .reader import read_recording

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise RecordingError(f"{out} exists: the export writes a new dataset directory (give a new path)")
    if fps is not None and (not isinstance(fps, int) or fps < 1):
        raise RecordingError(f"fps must be a whole number >= 1, got {fps!r}")
    result = ExportResult(out=str(out))
    recs = []
    for p in paths:
        try:
            rec = read_recording(p)
        except RecordingError as exc:
            result.skipped.append(f"{p}: not read: {exc}")
            continue
        result.skipped.extend(f"{p}: {problem}" for problem in rec.problems)
        recs.append(rec)
    result.files_read = len(recs)
    if not recs:
        raise RecordingError("nothing to export: " + "; ".join(result.skipped))
    names = recs[0].info.get("joint_names")
    kept = []
    for rec in recs:
        if rec.info.get("joint_names") != names:
            result.skipped.append(f"{rec.path}: its joints ({rec.info.get('joint_names')}) differ from "
                                  f"{recs[0].path}'s ({names}); not exported")
            continue
        kept.append(rec)
    recs = kept
    if fps is None:
        period = recs[0].info.get("control_period")
        fps = max(1, round(1.0 / period)) if isinstance(period, (int, float)) and period > 0 else 25
    result.fps = fps
    if cameras is None:
        cameras = sorted({c for rec in recs for c in rec.cameras if image_shape(rec, c) is not None})
        depth = sorted({c for rec in recs for c in rec.cameras} - set(cameras))
        if depth:
            result.skipped.append(f"camera(s) {', '.join(depth)}: no RGB images (depth is not exported)")
    shapes = {}
    for cam in cameras:
        shape = next((s for s in (image_shape(rec, cam) for rec in recs) if s is not None), None)
        if shape is None:
            raise RecordingError(f"camera {cam!r} has no RGB images in {', '.join(r.path for r in recs)} "
                                 f"(they record {', '.join(sorted({c for r in recs for c in r.cameras})) or 'none'})")
        if shape[0] % 2 or shape[1] % 2:
            raise RecordingError(f"camera {cam!r}'s images are {shape[1]}x{shape[0]}: yuv420p video needs even sizes")
        shapes[cam] = shape
    eps = []
    for rec in recs:
        got, why, notes = cut_episodes(rec, fps, shapes)
        eps.extend(got)
        result.skipped.extend(why)
        result.notes.extend(notes)
    if not eps:
        raise RecordingError("no episode could be exported: " + "; ".join(result.skipped[-5:]))
    if names is None:
        names = [f"joint_{i}" for i in range(eps[0].state.shape[1])]
    codec = pick_codec(codec) if shapes else ""
    result.codec, result.cameras = codec, list(shapes)
    task = task or DEFAULT_TASK

    features = {"observation.state": {"dtype": "float32", "shape": [len(names)], "names": list(names)},
                "action": {"dtype": "float32", "shape": [len(names)], "names": list(names)}}
    for cam, shape in shapes.items():
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": list(shape),
                                                 "names": ["height", "width", "channels"]}
    features.update(json.loads(json.dumps(INDEX_FEATURES)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        robot_type = robot_type or f"robot-env/{recs[0].info.get('backend')}"
        _write(tmp, eps, features, shapes, fps, codec, task, robot_type, data_mb, video_mb)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.episodes = len(eps)
    result.frames = sum(e.length for e in eps)
    result.seconds = time.perf_counter() - t_start
    return result


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes a DataFrame indexed by "task" with a task_index column (LeRobot
    reads it with pandas), without needing pandas: the index is named in pandas' own schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    meta = {"index_columns": ["task"], "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                                           "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                         "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    schema = pa.schema([pa.field("task_index", pa.int64()), pa.field("task", pa.string())],
                       metadata={b"pandas": json.dumps(meta).encode()})
    pq.write_table(pa.table({"task_index": list(range(len(tasks))), "task": tasks}, schema=schema), path)


def _write(root: Path, eps, features: dict, shapes: dict, fps: int, codec: str, task: str, robot_type,
           data_mb: float, video_mb: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _DataFiles(root, features, data_mb)
    videos = {cam: _VideoFiles(root, f"observation.images.{cam}", fps, codec, shape, video_mb)
              for cam, shape in shapes.items()}
    rows, all_stats = [], []
    index = 0
    try:
        for e_idx, ep in enumerate(eps):
            n = ep.length
            cols = {"observation.state": ep.state, "action": ep.action, "timestamp": ep.timestamps,
                    "frame_index": np.arange(n), "episode_index": np.full(n, e_idx),
                    "index": np.arange(index, index + n), "task_index": np.zeros(n, dtype=np.int64)}
            chunk, file = data.write(cols)
            row = {"episode_index": e_idx, "tasks": [task], "length": n, "data/chunk_index": chunk,
                   "data/file_index": file, "dataset_from_index": index, "dataset_to_index": index + n}
            stats = {k: _stats(np.asarray(v).reshape(n, -1)) for k, v in cols.items()}
            for cam, vid in videos.items():
                key = f"observation.images.{cam}"
                vchunk, vfile, start = vid.begin_episode()
                pick = set(np.linspace(0, n - 1, min(n, IMAGE_STATS_FRAMES)).round().astype(int).tolist())
                sample = []
                last = None
                for k in range(n):
                    msg = ep.images[cam][k]
                    if msg != last:  # a repeated image (zero-order hold) is decoded once
                        img, last = ep.image(cam, k), msg
                    vid.add(img)
                    if k in pick:
                        sample.append(img)
                row.update({f"videos/{key}/chunk_index": vchunk, f"videos/{key}/file_index": vfile,
                            f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + n / fps})
                stats[key] = _image_stats(np.stack(sample))
            row.update({f"stats/{feat}/{name}": _plain(v) for feat, s in stats.items() for name, v in s.items()})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            rows.append(row)
            all_stats.append(stats)
            index += n
    finally:
        data.close()
        for vid in videos.values():
            vid.close()

    for cam in shapes:  # the video features' info, probed from the first file as LeRobot does
        key = f"observation.images.{cam}"
        features[key]["info"] = _video_info(root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                                            codec)
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
    _write_tasks(root / "meta/tasks.parquet", [task])
    stats = {feat: _plain(_aggregate([s[feat] for s in all_stats])) for feat in all_stats[0]}
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(eps),
            "total_frames": index, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": int(data_mb) if float(data_mb).is_integer() else data_mb,
            "video_files_size_in_mb": int(video_mb) if float(video_mb).is_integer() else video_mb, "fps": fps,
            "splits": {"train": f"0:{len(eps)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if shapes else None, "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
