"""`replay`: a recording's commands re-sent with their timing through the normal client (the server's
safety layer applies), each wait capped, every request built before the first is sent."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ServerError
from .format import DEFAULT_MAX_WAIT, RecordingError, RecordingStats, _now
from .reader import Recording, read_recording
from .recorder import Recorder
from .schema import Invalid, command_request, known_reset_options


@dataclass
class ReplayResult:
    sent: int = 0
    total: int = 0  # commands to replay (up to a hole or a recorded e-stop)
    recorded: int = 0  # valid commands in the file
    skipped: int = 0  # invalid records the reader left out (`Recording.skipped` says why)
    duration: float = 0.0
    stopped: str = ""
    problems: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)  # (t since the first command, q) per reply
    final_state: dict | None = None
    recording: RecordingStats | None = None
    max_wait: float = DEFAULT_MAX_WAIT  # s, the longest wait between two commands
    jumps_capped: int = 0  # recorded gaps between commands longer than max_wait, waited max_wait
    longest_jump: float = 0.0  # the longest of them, s (after `speed`)
    jumps_back: int = 0  # commands recorded as applied before the one sent ahead of them: not waited
    longest_wait: float = 0.0  # the longest single wait between two commands, s
    waited: float = 0.0  # all waits together, s

    def __str__(self) -> str:
        s = f"replayed {self.sent} of {self.total} commands in {self.duration:.2f} s"
        if self.recorded != self.total:
            s += f" ({self.recorded} in the recording)"
        if self.skipped:
            s += f"; {self.skipped} invalid records skipped"
        if self.jumps_capped:
            s += (f"; {self.jumps_capped} waits cut to the {self.max_wait:g} s max wait (the longest gap recorded: "
                  f"{self.longest_jump:.1f} s)")
        if self.jumps_back:
            s += f"; {self.jumps_back} backward jumps in time (not waited)"
        return s + (f"; {self.stopped}" if self.stopped else "")


class _Pacer:
    """The waits between replayed commands: the recorded spacing of their apply times `ta`, scaled by
    1/`speed`, each wait at most `max_wait` (a clock step or a long pause in a recording must not
    stall a replay for as long), none for a step back in time. A replay that falls behind catches up
    without waiting, as the original schedule would."""

    def __init__(self, speed: float, max_wait: float, result: ReplayResult):
        self.speed, self.max_wait, self.result = speed, max_wait, result
        self.due: float | None = None
        self.prev: float | None = None

    def wait(self, t: float, count: bool = True) -> None:
        """Wait until the event recorded at `t` is due (`count`: jumps count as the replay's problems)."""
        r = self.result
        now = _now()
        if self.due is None:
            self.due = now
        else:
            gap = (t - self.prev) / self.speed
            if gap < 0:
                if count:
                    r.jumps_back += 1
                gap = 0.0
            elif gap > self.max_wait:
                if count:
                    r.jumps_capped += 1
                    r.longest_jump = max(r.longest_jump, gap)
                gap = self.max_wait
            self.due += gap
        self.prev = t
        delay = self.due - now
        if delay > 0:
            time.sleep(delay)
            r.waited += delay
            r.longest_wait = max(r.longest_wait, delay)


def replay_events(rec: Recording, through_gaps: bool = False) -> tuple[list, list]:
    """The commands to replay, in the order the server applied them, and notes on what is left out.

    A hole in the command numbers (``cseq``) ends the replay before it: commands after a hole would
    run from a pose the robot is not in. (The hole is either a damaged part of the file or commands
    the stream dropped; `through_gaps` replays across it anyway.) A recorded e-stop ends the replay
    with an e-stop: a replay never clears one by itself.
    """
    notes = []
    cmds: list = []
    first = (rec.summary or {}).get("first_command")
    if rec.commands and isinstance(first, int) and rec.commands[0].get("cseq", first) > first:
        notes.append(f"commands {first}..{rec.commands[0]['cseq'] - 1} were lost with a damaged part of the "
                     f"file: the replay starts at command {rec.commands[0]['cseq']}, from the pose recorded "
                     "just before it")
    dropped = {tuple(r) for r in (rec.summary or {}).get("missing_commands", [])}
    for c in rec.commands:
        seq = c.get("cseq")
        last = cmds[-1].get("cseq") if cmds else None
        if (not through_gaps and isinstance(seq, int) and isinstance(last, int) and seq > last + 1):
            invalid = sum(last < n < seq for n in rec.invalid_cseqs)
            why = ("the stream dropped them before the recorder saw them" if (last + 1, seq - 1) in dropped
                   else f"{invalid} of them skipped as invalid records" if invalid
                   else "lost with a damaged part of the file")
            notes.append(f"commands {last + 1}..{seq - 1} are missing ({why}): replaying the {len(cmds)} "
                         f"commands before the hole, not the {len(rec.commands) - len(cmds)} after it")
            break
        cmds.append(c)
    estop_at, prev = None, None
    for s in rec.states:
        if s.get("mode") == "estop" and prev not in (None, "estop"):
            estop_at = s.get("ts")
            break
        prev = s.get("mode")
    if estop_at is not None:
        before = [c for c in cmds if c.get("ta", 0.0) <= estop_at]
        notes.append(f"the recording was e-stopped at ts {estop_at:.3f} after {len(before)} commands: the replay "
                     "stops there with an e-stop (it never clears an e-stop by itself)")
        cmds = before + [{"op": "estop", "ta": estop_at}]
    return cmds, notes


def replay(path, config=None, *, speed: float = 1.0, reset: bool = True, record=None, clock: str | None = None,
           through_gaps: bool = False, max_wait: float = DEFAULT_MAX_WAIT, echo=None) -> ReplayResult:
    """Re-send a recording's commands with their original timing through the normal client.

    Works on any backend the config names (no endpoint: a spawned server on the recording's clock);
    the server validates and clips as it did when recording. With `reset`, the robot first goes to
    the recorded start pose (arm and torso, through `reset`) unless the recording begins with its
    own reset. `speed` scales the waits between commands (a `step` still takes one control period
    on a realtime server); no wait is longer than `max_wait` s (longer recorded gaps are counted in
    `ReplayResult.jumps_capped`, steps back in time in `jumps_back`, and both are `problems`). A
    damaged recording replays its intact part, and invalid records are skipped (the reader checks
    each against its schema, commands by the server's own rules, before anything is sent);
    `ReplayResult.problems` says what was lost. `record` records the replay itself to another file.
    """
    from ..bridge.session import Session
    from ..model.description import ARM, TORSO

    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if not max_wait >= 0:
        raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait}")
    echo = echo or (lambda text: None)
    rec = read_recording(path)
    result = ReplayResult(problems=list(rec.problems), skipped=rec.n_skipped, max_wait=max_wait)
    events, notes = replay_events(rec, through_gaps)
    result.problems += notes
    result.total = len([e for e in events if e["op"] != "estop"])
    result.recorded = len(rec.commands)
    if not result.total:  # unusable: one line that says why
        why = [rec.skip_summary()] if rec.skipped else []
        why += [p for p in result.problems if not p.startswith("skipped ")][:2]
        raise RecordingError(f"{path}: no valid command to replay" + (f" ({'; '.join(why)})" if why else ""))
    for p in result.problems:
        echo(f"warning: {p}")
    try:  # what each command re-sends, by the server's own rules: all of it before anything is sent
        known = known_reset_options(rec.info)
        requests = [command_request(e, rec.batch, known) if e["op"] != "estop" else None for e in events]
    except Invalid as exc:  # a Recording built by hand, not read: the reader skips these
        raise RecordingError(f"{path}: a recorded command would be refused: {exc}; nothing was replayed") from None
    used = sorted({ch for e in events if e["op"] in ("step", "command") for ch in e.get("cmd", {})})
    clock = clock or rec.info.get("clock")
    session = Session(config, {"server": {"clock": clock}} if clock in ("lockstep", "realtime") else None)
    recorder = None
    try:
        client, info = session.client, session.info
        missing = [ch for ch in used if ch not in info.get("channels", [])]
        if missing:
            raise RecordingError(f"the {info.get('backend')} backend does not support the recorded "
                                 f"channel(s) {', '.join(missing)}; nothing was replayed")
        n_rec, n_srv = rec.info.get("num_robots") or 1, info.get("num_robots") or 1
        if n_rec != n_srv:
            raise RecordingError(f"the recording drove {n_rec} robot(s) per request, this server hosts {n_srv}: "
                                 "replay onto a server of the same size; nothing was replayed")
        names = rec.info.get("joint_names")
        if names and list(names) != list(info.get("joint_names", [])):
            raise RecordingError("the recording's joints differ from this robot's; nothing was replayed")
        if rec.info.get("description_hash") not in (None, info.get("description_hash")):
            echo("warning: the robot description (limits) differs from the recording's")
        if record is not None:
            recorder = Recorder(client.endpoint, record).start()
        if reset and events[0]["op"] != "reset":
            first_ta = events[0].get("ta", 0.0)
            before = [s for s in rec.states if s.get("ts", 0.0) <= first_ta] or rec.states[:1]
            if before:
                q0 = np.asarray(before[-1]["q"], dtype=float)  # (11,), or (N, 11) from a batched server
                try:
                    client.reset(options={"initial_arm_position": q0[..., ARM], "initial_torso": q0[..., TORSO]})
                except ServerError as exc:
                    raise RecordingError(f"the server refused the recorded start pose: {exc.message} [{exc.code}]; "
                                         "nothing was replayed (--no-reset starts from where the robot is)") from None
        realtime = info.get("clock") == "realtime"
        pacer = _Pacer(speed, max_wait, result)
        t0 = _now()
        for ev, req in zip(events, requests):
            pacer.wait(ev["ta"])
            op = ev["op"]
            try:
                if op == "step":
                    st = client.step(req["cmd"])
                elif op == "command":
                    st = client.command(req["cmd"])
                elif op == "reset":
                    st = client.reset(seed=req["seed"], options=req["options"])
                elif op == "estop":
                    client.estop()
                    result.stopped = "stopped at the recorded e-stop (the e-stop is latched)"
                    break
                else:
                    continue
            except ServerError as exc:
                if exc.code == "estop":
                    result.stopped = (f"the robot was e-stopped during the replay: stopped after {result.sent} "
                                      f"of {result.total} commands")
                    break
                raise RecordingError(f"the server refused recorded command {result.sent + 1} ({op}): "
                                     f"{exc.message} [{exc.code}]; replay stopped") from None
            result.sent += 1
            result.trajectory.append((_now() - t0, np.array(st["q"])))
        if realtime and rec.states and not result.stopped and result.sent:
            # let the robot run out the recording's tail (it settled while the recorder listened)
            pacer.wait(max(s["ts"] for s in rec.states), count=False)
        timing = []
        if result.jumps_capped:
            timing.append(f"{result.jumps_capped} gaps between recorded commands were longer than the {max_wait:g} s "
                          f"max wait and were cut to it (the longest: {result.longest_jump:.1f} s): the replay's "
                          "timing differs there (--max-wait keeps longer pauses)")
        if result.jumps_back:
            timing.append(f"{result.jumps_back} recorded commands were applied before the one ahead of them (the "
                          "recorded time went back): sent without waiting")
        for p in timing:
            echo(f"warning: {p}")
        result.problems += timing
        result.final_state = client.state()
        result.duration = _now() - t0
        if recorder is not None:
            result.recording = recorder.stop()
            recorder = None
    finally:
        if recorder is not None:
            try:
                recorder.stop("replay failed")
            except Exception:
                pass
        session.close()
    return result
