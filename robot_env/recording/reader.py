"""`read_recording`: a recording read tolerantly (what is intact, and a list of `problems`), every
record checked against the schema the recorder wrote, bad ones skipped and counted."""
from __future__ import annotations

import io
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .format import (
    FIXED_CHANNELS,
    MAGIC,
    MAX_EXAMPLES,
    MAX_REASONS,
    META_INFO,
    META_SUMMARY,
    TOPIC_COMMAND,
    TOPIC_STATE,
    RecordingError,
    SeqCounter,
    _need_mcap,
)
from .schema import (
    INFO_SCHEMA,
    MAX_SEQ,
    SUMMARY_SCHEMA,
    Invalid,
    check_metadata,
    check_record,
    known_reset_options,
    shape_of,
)


@dataclass
class Recording:
    """A recording read back: robot info, messages by topic, and what (if anything) was damaged.

    `problems` is empty for an intact, properly closed file. `closed` is False when the recorder
    never closed it (killed, or the machine lost power): every message up to the cut is still here.
    `damaged` is True when data inside the file (not just its unwritten tail) could not be read.
    Every record here passed its schema (`robot_env.recording.schema`); those that did not are left
    out and counted in `skipped` (reason -> count, a few examples each in `skip_examples`, and a line
    per reason in `problems`); `invalid_cseqs` are the command numbers of skipped commands.
    """
    path: str
    info: dict = field(default_factory=dict)
    summary: dict | None = None
    states: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    events: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    closed: bool = False
    damaged: bool = False
    truncated: bool = False
    bytes_read: int = 0
    size: int = 0
    skipped: dict = field(default_factory=dict)
    skip_examples: dict = field(default_factory=dict)
    invalid_cseqs: list = field(default_factory=list)
    batch: int | None = None  # robots per state of a batched server's recording; None: one robot

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def cameras(self) -> list[str]:
        """The cameras whose frames were recorded (``/camera/<name>`` topics)."""
        from .images import CAMERA_TOPIC
        return sorted(t[len(CAMERA_TOPIC):] for t in self.events if t.startswith(CAMERA_TOPIC))

    def frames(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """A camera's recorded frames as (times (k,), frames (k, h, w, c)); frames that do not decode
        or differ in shape from the first are left out (and said in `problems`)."""
        from .images import CAMERA_TOPIC, decode_frame
        msgs = self.events.get(CAMERA_TOPIC + camera)
        if msgs is None:
            raise KeyError(f"no frames of camera {camera!r} in {self.path} (it has {', '.join(self.cameras) or 'none'})")
        times, out, bad = [], [], 0
        for m in msgs:
            try:
                f = decode_frame(m)
            except ValueError:
                bad += 1
                continue
            if out and f.shape != out[0].shape:
                bad += 1
                continue
            ts = m.get("timestamp") or {}
            times.append(float(ts.get("sec", 0)) + float(ts.get("nsec", 0)) * 1e-9)
            out.append(f)
        if bad:
            self.problems.append(f"{bad} frame(s) of camera {camera!r} did not decode and were left out")
        if not out:
            return np.zeros(0), np.zeros((0, 0, 0, 0), np.uint8)
        return np.array(times), np.stack(out)

    def skip_summary(self, reasons: int = 2) -> str:
        """One line: how many records were skipped, and the commonest reasons."""
        if not self.skipped:
            return ""
        top = sorted(self.skipped.items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{n} × {key.replace(chr(0), ': ')}" for key, n in top[:reasons])
        return f"{self.n_skipped} invalid records skipped ({text}{', ...' if len(top) > reasons else ''})"

    def array(self, key: str, states=None) -> np.ndarray:
        """A state field over time, e.g. ``array("q")`` -> (N, 11); ``array("ts")`` -> (N,)."""
        states = self.states if states is None else states
        return np.array([s.get(key) for s in states], dtype=float)

    def gaps(self) -> tuple[SeqCounter, SeqCounter]:
        """(states, commands) gaps recounted from the messages in the file: what the stream dropped
        before the recorder saw it, plus whatever a damaged part of the file held."""
        s, c = SeqCounter(), SeqCounter()
        for m in self.states:
            s.see(m.get("seq"))
        for m in self.commands:
            c.see(m.get("cseq"))
        return s, c

    def latencies(self) -> dict:
        """Delays from the recorded stamps, in seconds: ``stream`` (state sampled -> received by the
        recorder), ``apply_to_state`` (command applied -> the next state sampled), ``send_to_apply``
        (client sent -> applied; two processes' clocks, the same clock on one host)."""
        ts = self.array("ts")
        out = {"stream": self.array("t_recv") - ts if self.states else np.zeros(0)}
        seqs = np.array([s.get("seq", -1) for s in self.states], dtype=float)
        order = np.argsort(seqs, kind="stable")
        sorted_seqs = seqs[order]
        apply, send = [], []
        for c in self.commands:
            ta = c.get("ta")
            if ta is None:
                continue
            if c.get("t") is not None:
                send.append(ta - c["t"])
            after = c.get("after")
            if after is not None and len(sorted_seqs):
                i = int(np.searchsorted(sorted_seqs, after, side="right"))
                if i < len(sorted_seqs) and sorted_seqs[i] == after + 1:  # the very next sample
                    apply.append(ts[order[i]] - ta)
        out["apply_to_state"] = np.array(apply)
        out["send_to_apply"] = np.array(send)
        return out

    def report(self) -> str:
        """A few lines: what is in the file, what the stream dropped, what the file lost."""
        s, c = self.gaps()
        span = (self.states[-1]["t_recv"] - self.states[0]["t_recv"]) if len(self.states) > 1 else 0.0
        lines = [f"{self.path}: {len(self.states)} states (seq {s.first}..{s.last}), "
                 f"{len(self.commands)} commands over {span:.2f} s; "
                 f"{self.info.get('backend', '?')} backend, {self.info.get('clock', '?')} clock"]
        if self.summary is not None:
            lines.append(f"recorder: {self.summary.get('state_gaps', 0)} gaps in the stream "
                         f"({self.summary.get('states_lost', 0)} states, {self.summary.get('commands_lost', 0)} "
                         "commands dropped before reaching it)")
        lines.append(f"in the file: {s.gaps} state gaps ({s.lost} missing), {c.gaps} command gaps "
                     f"({c.lost} missing)")
        return "\n".join(lines + self.problems)


def _parse_meta(data: dict) -> dict:
    out = {}
    for k, v in data.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


class _ChunkError(Exception):
    pass


def _opname(op: int) -> str:
    from mcap.opcode import Opcode
    try:
        return Opcode(op).name.lower()
    except ValueError:
        return f"0x{op:02x}"


class _Reader:
    """Walks the MCAP records one by one with the `mcap` library's record parsers, checking each
    record's length against the file and each chunk's CRC; after damage it resynchronizes on the
    next intact chunk, so a hole in the middle costs only what it held."""

    def __init__(self, rec: Recording, data: bytes):
        self.rec, self.data = rec, data
        # channel id -> (topic, message encoding)
        self.channels: dict[int, tuple[str, str]] = {i: (t, "json") for i, t in FIXED_CHANNELS.items()}
        self.unknown: list = []  # messages whose channel record is not (yet) read
        self.raw: list = []  # ((topic, encoding), Message) in file order, checked once everything is read
        self.last_recv: float | None = None  # receive time of the last state or command read

    def run(self) -> None:
        from mcap.data_stream import ReadDataStream
        from mcap.opcode import Opcode
        from mcap.records import Channel, Chunk, Message, Metadata

        data, rec = self.data, self.rec
        n = len(data)
        pos = 8
        while pos < n:
            if n - pos < 9:
                self._cut(pos, "a record header")
                break
            opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            end = pos + 9 + length
            if end > n or opcode == 0 or opcode > 0x20:
                # A record running past the end: the tail of a killed recording, or a damaged header.
                nxt = self._resync(pos + 1)
                if nxt is None:
                    self._cut(pos, f"a {_opname(opcode)} record of {length} bytes" if end > n else
                              f"an unreadable record (type 0x{opcode:02x})")
                    break
                self._damage(f"bytes {pos}..{nxt} are unreadable (a damaged record header); reading "
                             f"resumed at the next intact chunk")
                pos = nxt
                continue
            stream = ReadDataStream(io.BytesIO(data[pos + 9:end]))
            try:
                if opcode == Opcode.CHUNK:
                    self._chunk(Chunk.read(stream))
                elif opcode == Opcode.CHANNEL:
                    ch = Channel.read(stream)
                    self.channels[ch.id] = (ch.topic, ch.message_encoding)
                elif opcode == Opcode.MESSAGE:
                    self._message(Message.read(stream, length))
                elif opcode == Opcode.METADATA:
                    md = Metadata.read(stream)
                    if md.name == META_INFO:
                        rec.info = _parse_meta(md.metadata)
                    elif md.name == META_SUMMARY:
                        rec.summary = _parse_meta(md.metadata)
                elif opcode == Opcode.FOOTER:
                    rec.closed = data[end:end + 8] == MAGIC
                    if not rec.closed:
                        rec.problems.append(f"the file's closing magic bytes are damaged (byte {end})")
                    pos = n
                    break
            except _ChunkError as exc:  # framing intact: skip just this chunk
                self._damage(f"the chunk at byte {pos} ({9 + length} bytes) {exc}; its messages are lost")
            except Exception as exc:
                nxt = self._resync(pos + 1)
                self._damage(f"the {_opname(opcode)} record at byte {pos} is unreadable ({type(exc).__name__}: "
                             f"{exc}); " + (f"reading resumed at byte {nxt}" if nxt is not None else
                                            f"nothing readable after it ({n - pos} bytes lost)"))
                pos = n if nxt is None else nxt
                continue
            pos = end
        rec.bytes_read = min(pos, n)
        unknown, self.unknown = self.unknown, []
        for m in unknown:  # a closed file repeats its channels in the summary section
            self._message(m)
        if self.unknown:
            self._damage(f"{len(self.unknown)} messages are on channels whose definition was lost")
        if not rec.closed and not rec.truncated:
            rec.truncated = True
            rec.problems.append("the file was not closed (no footer: the recorder was killed or its machine "
                                "stopped before it finished); every message written before that is intact")
        self._check()

    def _damage(self, text: str) -> None:
        self.rec.damaged = True
        self.rec.problems.append(text)

    def _cut(self, pos: int, what: str) -> None:
        when = f", after the message received at {self.last_recv:.3f}" if self.last_recv is not None else ""
        self.rec.truncated = True
        self.rec.problems.append(
            f"the file ends in the middle of {what} at byte {pos}{when} ({len(self.data) - pos} bytes "
            "unreadable): the recorder was killed or the file was cut short; everything before is intact")

    def _resync(self, start: int) -> int | None:
        """The offset of the next intact chunk (CRC checked) or robot-env metadata record, if any."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Chunk, Metadata
        from mcap.stream_reader import breakup_chunk

        data, n = self.data, len(self.data)
        pos = start
        while True:
            c = data.find(b"\x06", pos)
            m = data.find(b"\x0c", pos)
            cand = min(x for x in (c, m, n) if x >= 0)
            if cand + 9 > n:
                return None
            length = struct.unpack_from("<Q", data, cand + 1)[0]
            if cand + 9 + length <= n:
                body = ReadDataStream(io.BytesIO(data[cand + 9:cand + 9 + length]))
                try:
                    if data[cand] == 0x06:
                        chunk = Chunk.read(body)
                        if chunk.uncompressed_crc:
                            breakup_chunk(chunk, validate_crc=True)
                            return cand
                    elif Metadata.read(body).name in (META_INFO, META_SUMMARY):
                        return cand
                except Exception:
                    pass
            pos = cand + 1

    def _chunk(self, chunk) -> None:
        from mcap.records import Channel, Message
        from mcap.stream_reader import breakup_chunk

        try:
            records = breakup_chunk(chunk, validate_crc=True)
        except Exception as exc:
            span = (f" (messages received {chunk.message_start_time / 1e9:.3f}..{chunk.message_end_time / 1e9:.3f})"
                    if chunk.message_end_time else "")
            raise _ChunkError(f"failed its check: {type(exc).__name__}: {exc}{span}") from None
        for r in records:
            if isinstance(r, Channel):
                self.channels[r.id] = (r.topic, r.message_encoding)
            elif isinstance(r, Message):
                self._message(r)

    def _message(self, m) -> None:
        channel = self.channels.get(m.channel_id)
        if channel is None:
            self.unknown.append(m)
            return
        self.raw.append((channel, m))
        if channel[0] in (TOPIC_STATE, TOPIC_COMMAND):
            self.last_recv = m.log_time / 1e9

    # -- validation: every record against its schema, once the whole file (and its metadata) is read --
    def _check(self) -> None:
        """Decode each message (JSON only: nothing from a file is unpickled or evaluated) and keep
        those that pass their schema; skip and count the rest by reason. The joint vector's shape
        comes from the robot metadata (or, without it, the most common one), so it is known before
        the first state is checked."""
        rec = self.rec
        rec.info, bad = check_metadata(INFO_SCHEMA, rec.info)
        for exc in bad:
            self._skip(f"metadata {META_INFO}", exc, "")
        if rec.summary is not None:
            rec.summary, bad = check_metadata(SUMMARY_SCHEMA, rec.summary)
            for exc in bad:
                self._skip(f"metadata {META_SUMMARY}", exc, "")
        decoded = []
        for (topic, encoding), m in self.raw:
            if encoding != "json":
                self._skip(topic, Invalid(f"message encoding {encoding!r}, not json"), _received(m.log_time))
                continue
            try:
                msg = json.loads(m.data)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                self._skip(topic, Invalid("not JSON", f"{type(exc).__name__}: {str(exc)[:60]}"), _received(m.log_time))
                continue
            if not isinstance(msg, dict):
                self._skip(topic, Invalid("not a JSON object", f"a JSON {type(msg).__name__}"), _received(m.log_time))
                continue
            decoded.append((topic, msg, m.log_time))
        self.raw = []  # the bytes are decoded: let them go
        dims = _dims(rec.info, [msg for topic, msg, _ in decoded if topic == TOPIC_STATE])
        rec.batch = dims["robots"]
        for topic, msg, log_time in decoded:
            kind = "state" if topic == TOPIC_STATE else "command" if topic == TOPIC_COMMAND else "event"
            try:
                check_record(kind, msg, dims)
            except Invalid as exc:
                name = "seq" if kind == "state" else "cseq"
                number = msg.get(name)
                ok_number = isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= MAX_SEQ
                self._skip(topic, exc, (f"{name} {number} " if ok_number else "") + _received(log_time))
                if kind == "command" and ok_number:
                    rec.invalid_cseqs.append(number)
                continue
            if kind == "state":
                rec.states.append(msg)
            elif kind == "command":
                rec.commands.append(msg)
            else:
                rec.events.setdefault(topic, []).append(msg)
        reasons = sorted(rec.skipped.items(), key=lambda kv: -kv[1])
        for key, count in reasons[:MAX_REASONS]:
            where, why = key.split("\0")
            rec.problems.append(f"skipped {count} invalid {where} record{'s' if count != 1 else ''}: {why} "
                                f"(e.g. {'; '.join(rec.skip_examples[key])})")
        if len(reasons) > MAX_REASONS:
            rest = reasons[MAX_REASONS:]
            rec.problems.append(f"skipped {sum(n for _, n in rest)} more invalid records, for {len(rest)} other "
                                "reasons")

    def _skip(self, where: str, exc: Invalid, example: str) -> None:
        key = f"{where}\0{exc.reason}"
        count = self.rec.skipped.get(key, 0)
        self.rec.skipped[key] = count + 1
        if count < MAX_EXAMPLES:
            text = ": ".join(part for part in (example, exc.detail) if part)
            self.rec.skip_examples.setdefault(key, []).append(text or "no details")


def _received(log_time: int) -> str:
    return f"received {log_time / 1e9:.3f}"


def _dims(info: dict, states: list) -> dict:
    """The joint vectors' expected shape for `validate`: (J,), or (N, J) on a batched server of N robots.

    The robot metadata's joint count and robot count choose among the shapes the states have (a
    batched server of one robot records (1, J)); without metadata, the most common shape wins."""
    shapes = [sh for sh, _ in Counter(shape_of(s["q"]) for s in states if isinstance(s.get("q"), list)).most_common()
              if sh is not None and len(sh) in (1, 2) and min(sh) >= 1]
    joints = len(info["joint_names"]) if info.get("joint_names") else None
    robots = info.get("num_robots") or 1
    if joints is not None:
        fits = [sh for sh in shapes if sh in ((joints,), (robots, joints))]
        shape = fits[0] if fits else ((joints,) if robots == 1 else (robots, joints))
    elif shapes:
        shape = shapes[0]
    else:  # no state to learn from: a batched server's commands still need its size
        return {"joints": None, "robots": robots if robots > 1 else None, "reset_options": known_reset_options(info)}
    return {"joints": shape[-1], "robots": shape[0] if len(shape) == 2 else None,
            "reset_options": known_reset_options(info)}


def read_recording(path) -> Recording:
    """Read a recording, keeping whatever is intact; `Recording.problems` says what was not.

    Raises `RecordingError` only when nothing can be read (missing file, not an MCAP file, nothing
    of a robot-env recording in it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read recording {str(path)!r}: {exc.strerror or exc}") from None
    _need_mcap()
    rec = Recording(path=str(path), size=len(data))
    if data[:8] != MAGIC:
        raise RecordingError(f"{path} is not an MCAP recording (it does not start with the MCAP magic bytes)"
                             if len(data) >= 8 else f"{path} is empty or cut to {len(data)} bytes")
    _Reader(rec, data).run()
    if not rec.info and not rec.states:
        why = rec.skip_summary() or "; ".join(rec.problems[:2]) or "it holds no robot-env metadata and no states"
        raise RecordingError(f"{path}: no robot-env recording could be read: {why}")
    return rec
