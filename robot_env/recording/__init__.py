"""Recording: a robot server's state stream and applied commands in an MCAP file; reading and replaying it.

Modules: `format` (topics, metadata, counting), `recorder` (`Recorder`), `reader` (`read_recording`),
`replay`, `schema` (what a valid record is), `plot`, `episodes` (a recording cut into episodes on a
frame grid) and `lerobot` (`export_lerobot`: those episodes as a LeRobotDataset v3.0).

What is recorded. A `Recorder` subscribes to the server's stream (the endpoint `hello` announces)
from a background thread and writes every message as it arrives:

- ``/robot/state``: every state sample: ``seq`` (the stream's number), ``ts`` (server sample
  time), ``t_recv`` (when the recorder received it), ``time`` (the backend's clock), ``mode``,
  ``faults``, ``clipped`` and every vector (``q``, ``dq``, ``effort``, ``target``, ``ee``,
  ``ee_vel``, ``base``, ...) as plain lists.
- ``/robot/command``: every command the server *applied* (refused ones never reach the stream),
  whoever sent it: ``op`` (``step``, ``command`` or ``reset``), ``cmd`` (the validated channels) or
  ``seed``/``options``, ``cseq`` (the server's command number), ``t`` (client send time),
  ``client_seq``, ``ta`` (apply time), ``after`` (the ``seq`` of the last state before it) and
  ``t_recv``. The server publishes these under its ``command`` topic only while someone subscribes
  to it, so without a recorder the command path costs one integer test.
- anything logged with `Recorder.log` (the env wrapper writes ``/env/episode``: seed, goal, return).

Each MCAP message also carries the times natively: ``log_time`` = receive time, ``publish_time`` =
server sample/apply time, ``sequence`` = ``seq``/``cseq``. Gaps in ``seq``/``cseq`` (the stream
dropped messages because the recorder fell behind) are counted live, returned by `Recorder.stop`,
and written into the file's ``robot_env.summary`` metadata; the reader recounts them from the
messages, so a recording that was never closed still says what it lacks. The metadata record
``robot_env.recording`` holds the robot: backend, clock, control period, joint names, description.

Why MCAP (not HDF5, not a LeRobot dataset).

- Crash safety. MCAP is an append-only log of self-delimiting records: whatever reached the file
  before a crash is readable, with no index to repair. The recorder closes a chunk and flushes it
  every `flush_interval` (0.2 s), so a SIGKILL or power loss of the recording process loses at most
  that; on a lost server nothing is lost (the recorder closes the file normally). An HDF5 file being
  written keeps its B-tree and free-space metadata in the library's cache: a killed writer often
  leaves a file h5py cannot open at all (SWMR mode mitigates this with stricter rules and is still
  not append-safe for variable records). A LeRobot dataset is parquet files plus episode metadata
  written when an episode ends, so a crash mid-episode loses the episode.
- Streaming. Messages of different kinds (states at the control rate, commands whenever they come,
  episode events) interleave in arrival order with their own timestamps; no fixed-shape arrays to
  pre-size or resize, as HDF5 datasets need.
- Opening it elsewhere. MCAP is ROS 2's default bag format: Foxglove Studio opens the file directly
  (plot ``/robot/state.q[3]`` against ``/robot/state.target[3]``), and so do the `mcap` CLI and the
  `mcap` Python/C++/Go/Rust/TS readers. Messages are JSON with a JSON Schema per topic (Foxglove's
  ``json`` encoding): any language reads them, nothing is pickled.
- Integrity. Each chunk carries a CRC of its content (zstd-compressed chunks), so corruption is
  detected, and reading resynchronizes on the next intact chunk to say exactly which seqs were lost.

`read_recording` reads a file tolerantly (a truncated or corrupted one gives what is intact plus a
list of `problems`) and checks every record against the schemas the recorder writes into the file
(`robot_env.recording.schema`; commands also by the server's own command rules): a record that
fails is skipped and counted by reason, so a hand-edited or hostile file (valid chunks, CRCs and
JSON, wrong fields) gives its valid part, never a crash. `replay` re-sends the recorded commands
with their original timing through the normal client (so the server's safety layer applies), each
wait capped; `robot-env record/replay/plot` wrap them.
"""
from .format import RecordingError, RecordingStats, SeqCounter  # noqa: E402
from .reader import Recording, read_recording  # noqa: E402
from .recorder import Recorder  # noqa: E402
from .replay import ReplayResult, replay, replay_events  # noqa: E402

__all__ = ["Recorder", "Recording", "RecordingError", "RecordingStats", "ReplayResult", "SeqCounter",
           "read_recording", "replay", "replay_events"]
