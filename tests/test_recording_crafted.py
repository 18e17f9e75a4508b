"""Crafted recordings: real MCAP files, written with the `mcap` library's writer (zstd chunks with
valid CRCs, JSON messages), whose records are wrong in the ways a hand-edited, foreign or hostile
file can be. The reader must skip each bad record and say why, `robot-env replay` and `robot-env
plot` (the real CLI in a subprocess, replay onto a spawned simulator) must use what is valid and
exit with their documented status, never a traceback, and a jump in recorded time must not stall a
replay for as long as the jump."""
import json
import pickle
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

mcap_writer = pytest.importorskip("mcap.writer")

from robot_env import config  # noqa: E402
from robot_env.model.description import JOINT_NAMES  # noqa: E402
from robot_env.recording import Recorder, RecordingError, read_recording, replay  # noqa: E402
from robot_env.recording.schema import COMMAND_SCHEMA, EVENT_SCHEMA, STATE_SCHEMA  # noqa: E402

INFO = {"backend": "kinematic", "clock": "lockstep", "control_period": 0.04, "joint_names": list(JOINT_NAMES),
        "channels": ["arm_position", "arm_velocity", "base_twist", "ee_delta", "gripper", "head", "torso"],
        "num_robots": 1, "description_hash": None}
T0 = 1_700_000_000.0
Q = [0.1, 0.0, -0.5, 0.0, 1.2, 0.0, 0.6, 0.0, 0.02, 0.0, 0.0]  # torso, arm (7), gripper, head (2)


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "robot_env", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def state(seq, /, **kw):
    t = T0 + 0.04 * seq
    s = {"seq": seq, "ts": t, "t_recv": t + 0.001, "time": 0.04 * seq, "mode": "ok", "faults": [], "clipped": [],
         "q": list(Q), "dq": [0.0] * 11, "effort": [0.0] * 11, "target": list(Q), "ee": [0.6, 0, 0.6, 0, 0.7, 0, 0.7],
         "ee_vel": [0.0] * 6, "base": [0.0] * 5, "objects": {}}
    s.update(kw)
    return s


def command(cseq, /, op="step", **kw):
    t = T0 + 0.04 * cseq + 0.01
    c = {"op": op, "cseq": cseq, "t": t - 0.0005, "client_seq": cseq + 1, "ta": t, "after": cseq, "t_recv": t + 0.001}
    if op == "reset":
        c.update(seed=3, options={"initial_torso": 0.1})
    else:
        c["cmd"] = {"ee_delta": [0.01, 0.0, -0.005]}
    c.update(kw)
    return c


def write_mcap(path, records, info=INFO, summary=None, chunk_size=1 << 20, info_last=False):
    """Write `records` [(topic, dict or raw bytes[, message encoding])] to an MCAP file with the
    `mcap` library: the recorder's three channels first (as it registers them), any other
    topic/encoding on first use. Dicts go out as JSON (NaN/Infinity as Python writes them)."""
    with open(path, "wb") as fh:
        w = mcap_writer.Writer(fh, chunk_size=chunk_size, compression=mcap_writer.CompressionType.ZSTD)
        w.start(profile="", library="crafted")
        if info is not None and not info_last:
            w.add_metadata("robot_env.recording", {k: json.dumps(v) for k, v in info.items()})
        channels = {}

        def channel(topic, encoding="json"):
            if (topic, encoding) not in channels:
                schema = {"/robot/state": STATE_SCHEMA, "/robot/command": COMMAND_SCHEMA}.get(topic, EVENT_SCHEMA)
                sid = w.register_schema(schema["title"], "jsonschema" if encoding == "json" else encoding,
                                        json.dumps(schema).encode())
                channels[topic, encoding] = w.register_channel(topic, encoding, sid)
            return channels[topic, encoding]

        for topic in ("/robot/state", "/robot/command", "/recorder"):
            channel(topic)
        for i, (topic, payload, *enc) in enumerate(records):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            t = payload.get("t_recv") if isinstance(payload, dict) else None
            t_ns = int(t * 1e9) if isinstance(t, float) and 0 <= t < 1.8e10 else i
            w.add_message(channel(topic, *enc), t_ns, data, t_ns, i)
        if info is not None and info_last:
            w.add_metadata("robot_env.recording", {k: json.dumps(v) for k, v in info.items()})
        if summary is not None:
            w.add_metadata("robot_env.summary", {k: json.dumps(v) for k, v in summary.items()})
        w.finish()
    return path


class Evil:
    """Unpickling this creates a file: the proof that nothing from a recording is unpickled."""
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def deep(n):
    return ("[" * n + "]" * n).encode()


# (name, topic, the bad record, what the reader must say). Each goes into a file of good records.
S, C = "/robot/state", "/robot/command"
BAD = [
    # states: missing fields, wrong types, non-finite and out-of-range values, wrong shapes
    ("state no seq", S, {k: v for k, v in state(3).items() if k != "seq"}, "'seq' is missing"),
    ("state no q", S, {k: v for k, v in state(3).items() if k != "q"}, "'q' is missing"),
    ("state no ts", S, {k: v for k, v in state(3).items() if k != "ts"}, "'ts' is missing"),
    ("state seq str", S, state(3, seq="3"), "'seq' is not an integer"),
    ("state seq float", S, state(3, seq=3.0), "'seq' is not an integer"),
    ("state seq bool", S, state(3, seq=True), "'seq' is not an integer"),
    ("state seq negative", S, state(3, seq=-3), "'seq' is out of range"),
    ("state seq huge", S, state(3, seq=10 ** 30), "'seq' is out of range"),
    ("state ts str", S, state(3, ts="soon"), "'ts' is not a number"),
    ("state ts NaN", S, state(3, ts=float("nan")), "'ts' is not finite"),
    ("state ts inf", S, state(3, ts=float("inf")), "'ts' is not finite"),
    ("state ts negative", S, state(3, ts=-1.0), "'ts' is out of range"),
    ("state ts beyond MCAP time", S, state(3, ts=1e300), "'ts' is out of range"),
    ("state q str", S, state(3, q="0.1 0.0"), "'q' is not an array"),
    ("state q map", S, state(3, q={"torso": 0.1}), "'q' is not an array"),
    ("state q short", S, state(3, q=Q[:3]), "'q' has the wrong shape"),
    ("state q long", S, state(3, q=Q + [0.0]), "'q' has the wrong shape"),
    ("state q empty", S, state(3, q=[]), "'q' has the wrong shape"),
    ("state q ragged", S, state(3, q=[Q, Q[:3]]), "'q' has the wrong shape"),
    ("state q batched in a 1-robot file", S, state(3, q=[Q, Q]), "'q' has the wrong shape"),
    ("state q item str", S, state(3, q=["0.1"] + Q[1:]), "'q[]' is not a number"),
    ("state q item NaN", S, state(3, q=[float("nan")] + Q[1:]), "'q[]' is not finite"),
    ("state q item -inf", S, state(3, q=Q[:5] + [float("-inf")] + Q[6:]), "'q[]' is not finite"),
    ("state q item null", S, state(3, q=[None] + Q[1:]), "'q[]' is not a number"),
    ("state q item bool", S, state(3, q=[True] + Q[1:]), "'q[]' is not a number"),
    ("state q item 1e300", S, state(3, q=[1e300] + Q[1:]), "'q[]' is out of range"),
    ("state q item 400-digit int", S, state(3, q=[10 ** 400] + Q[1:]), "'q[]' is not a number"),
    ("state target short", S, state(3, target=Q[:7]), "'target' has the wrong shape"),
    ("state target NaN", S, state(3, target=Q[:10] + [float("nan")]), "'target[]' is not finite"),
    ("state mode list", S, state(3, mode=["ok"]), "'mode' is not a string"),
    ("state time inf", S, state(3, time=float("inf")), "'time' is not finite"),
    ("state dq str", S, state(3, dq="fast"), "'dq' is not an array"),
    ("state ee nested", S, state(3, ee=[[0.6], [0.0]]), "'ee' has the wrong shape"),
    ("state objects list", S, state(3, objects=[1, 2]), "'objects' is not an object"),
    # not a JSON object at all
    ("state a JSON array", S, [state(3)], "not a JSON object"),
    ("state a JSON number", S, b"42", "not a JSON object"),
    ("state garbage bytes", S, b"\x00\xffnot json{", "not JSON"),
    ("state bad UTF-8", S, b'{"seq": "\xff\xfe"}', "not JSON"),
    ("state nested 100000 deep", S, deep(100_000), "not JSON"),
    ("state a pickle", S, "PICKLE", "not JSON"),
    ("state eval bait", S, b"__import__('os').getpid()", "not JSON"),
    # commands: the envelope
    ("command no op", C, {k: v for k, v in command(3).items() if k != "op"}, "'op' is missing"),
    ("command op unknown", C, command(3, op="explode"), "'op' is not one of step, command, reset"),
    ("command op estop", C, command(3, op="estop"), "'op' is not one of"),
    ("command op int", C, command(3, op=1), "'op' is not a string"),
    ("command no cseq", C, {k: v for k, v in command(3).items() if k != "cseq"}, "'cseq' is missing"),
    ("command cseq str", C, command(3, cseq="3"), "'cseq' is not an integer"),
    ("command cseq negative", C, command(3, cseq=-1), "'cseq' is out of range"),
    ("command cseq huge", C, command(3, cseq=2 ** 64), "'cseq' is out of range"),
    ("command no ta", C, {k: v for k, v in command(3).items() if k != "ta"}, "'ta' is missing"),
    ("command ta str", C, command(3, ta="later"), "'ta' is not a number"),
    ("command ta NaN", C, command(3, ta=float("nan")), "'ta' is not finite"),
    ("command t list", C, command(3, t=[1.0]), "'t' is not a number or null"),
    ("command after str", C, command(3, after="2"), "'after' is not an integer"),
    # commands: the channels, by the server's own parse_command
    ("command no cmd", C, {k: v for k, v in command(3).items() if k != "cmd"}, "[bad_command]"),
    ("command cmd list", C, command(3, cmd=[0.01, 0.0, 0.0]), "'cmd' is not an object"),
    ("command cmd unknown channel", C, command(3, cmd={"warp_drive": 1.0}), "[unknown_channel]"),
    ("command cmd robots in a 1-robot file", C, command(3, robots=[0]), "[bad_command]"),
    ("command ee_delta short", C, command(3, cmd={"ee_delta": [0.01, 0.0]}), "[bad_command]"),
    ("command ee_delta str", C, command(3, cmd={"ee_delta": "0.01 0 0"}), "[bad_command]"),
    ("command ee_delta item str", C, command(3, cmd={"ee_delta": ["0.01", 0.0, 0.0]}), "[bad_command]"),
    ("command ee_delta NaN", C, command(3, cmd={"ee_delta": [float("nan"), 0.0, 0.0]}), "[bad_command]"),
    ("command ee_delta 400-digit", C, command(3, cmd={"ee_delta": [10 ** 400, 0.0, 0.0]}), "[bad_command]"),
    ("command ee_delta map", C, command(3, cmd={"ee_delta": {"x": 0.01}}), "[bad_command]"),
    ("command gripper list", C, command(3, op="command", cmd={"gripper": [0.05]}), "[bad_command]"),
    ("command gripper bool", C, command(3, op="command", cmd={"gripper": True}), "[bad_command]"),
    ("command gripper inf", C, command(3, op="command", cmd={"gripper": float("inf")}), "[bad_command]"),
    ("command arm_position with arm_velocity", C,
     command(3, op="command", cmd={"arm_position": [0.0] * 7, "arm_velocity": [0.0] * 7}), "[bad_command]"),
    # resets: seed by the server's rule, options by its parse_reset_options
    ("reset seed negative", C, command(3, op="reset", seed=-1), "'seed' is out of range"),
    ("reset seed str", C, command(3, op="reset", seed="3"), "'seed' is not an integer or null"),
    ("reset seed beyond msgpack", C, command(3, op="reset", seed=2 ** 70), "'seed' is out of range"),
    ("reset options list", C, command(3, op="reset", options=[0.1]), "'options' is not an object or null"),
    ("reset options unknown", C, command(3, op="reset", options={"teleport": 1}), "[bad_options]"),
    ("reset options short", C, command(3, op="reset", options={"initial_arm_position": [0.0] * 6}), "[bad_options]"),
    ("reset options NaN", C, command(3, op="reset", options={"initial_torso": float("nan")}), "[bad_options]"),
    # channels the reader does not know how to decode
    ("state in protobuf", S, b"\x08\x03\x12\x00", "message encoding 'protobuf', not json", "protobuf"),
    ("foreign topic in cbor", "/camera/image", b"\xa1\x61a\x01", "message encoding 'cbor', not json", "cbor"),
    ("event a JSON array", "/env/episode", [1, 2], "not a JSON object"),
]
GOOD_STATES = [state(i) for i in range(1, 7)]
GOOD_COMMANDS = [command(1), command(2, op="command", cmd={"gripper": 0.05}), command(3, op="reset"),
                 command(4, op="command", cmd={"head": [0.3, -0.2]}), command(5)]


def bad_payload(case, tmp_path):
    payload = case[2]
    if payload == "PICKLE":
        Evil.marker = tmp_path / "unpickled"
        return pickle.dumps(Evil())
    return payload


def file_with(case, tmp_path):
    """The good records, with the bad one in the middle (its own encoding, if it has one)."""
    name, topic, _, _, *enc = case
    bad = (topic, bad_payload(case, tmp_path), *enc)
    good = [(S, s) for s in GOOD_STATES[:3]] + [(C, c) for c in GOOD_COMMANDS[:2]]
    rest = [(S, s) for s in GOOD_STATES[3:]] + [(C, c) for c in GOOD_COMMANDS[2:]]
    return write_mcap(tmp_path / (name.replace(" ", "_") + ".mcap"), good + [bad] + rest)


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_each_bad_record_is_skipped_with_its_reason(case, tmp_path):
    rec = read_recording(file_with(case, tmp_path))
    assert rec.n_skipped == 1, rec.skipped
    (key,) = rec.skipped
    assert case[3] in key and key.startswith(case[1]), key
    assert any(case[3] in p and p.startswith(f"skipped 1 invalid {case[1]} record") for p in rec.problems)
    # every good record is kept, exactly as written
    assert rec.states == GOOD_STATES and rec.commands == GOOD_COMMANDS
    assert not (tmp_path / "unpickled").exists()


def test_invalid_metadata_fields_are_dropped_not_the_file(tmp_path):
    info = {**INFO, "clock": 3, "joint_names": "torso shoulder", "num_robots": "two", "control_period": -0.04}
    summary = {"first_command": "1", "missing_commands": 5, "state_gaps": 0}
    path = write_mcap(tmp_path / "meta.mcap", [(S, s) for s in GOOD_STATES] + [(C, c) for c in GOOD_COMMANDS],
                      info=info, summary=summary)
    rec = read_recording(path)
    assert rec.states == GOOD_STATES and rec.commands == GOOD_COMMANDS
    assert rec.info["backend"] == "kinematic"
    assert not {"clock", "joint_names", "num_robots", "control_period"} & set(rec.info)
    assert rec.summary == {"state_gaps": 0}
    assert rec.skipped == {"metadata robot_env.recording\0'clock' is not a string or null": 1,
                           "metadata robot_env.recording\0'joint_names' is not an array or null": 1,
                           "metadata robot_env.recording\0'num_robots' is not an integer or null": 1,
                           "metadata robot_env.recording\0'control_period' is out of range": 1,
                           "metadata robot_env.summary\0'first_command' is not an integer or null": 1,
                           "metadata robot_env.summary\0'missing_commands' is not an array": 1}


def test_the_joint_shape_comes_from_the_metadata_wherever_it_is(tmp_path):
    """Metadata written after the messages (as another writer may) still decides the joint count, and
    without metadata the most common shape does: the odd ones out are the ones skipped."""
    short = [state(i, q=Q[:7], target=Q[:7]) for i in range(10, 13)]  # more of these than of the good ones
    records = [(S, s) for s in GOOD_STATES[:2] + short]
    rec = read_recording(write_mcap(tmp_path / "late.mcap", records, info_last=True))
    assert rec.states == GOOD_STATES[:2] and rec.n_skipped == 3
    rec = read_recording(write_mcap(tmp_path / "none.mcap", records, info=None))
    assert rec.states == short and rec.n_skipped == 2 and not rec.info


def test_a_batched_recording_is_checked_per_robot(tmp_path):
    """A batched server's file (num_robots 2): states are (2, 11), commands one row per robot or per
    listed robot, by the server's parse_batch_command / parse_batch_reset_options."""
    info = {**INFO, "backend": "kinematic_batch", "num_robots": 2}

    def two(i, **kw):  # every vector one row per robot
        s = state(i)
        rows = {k: [v, v] for k, v in s.items() if isinstance(v, list) and k not in ("faults", "clipped")}
        return {**s, **rows, **kw}

    states = [two(i) for i in range(1, 5)]
    good = [command(1, cmd={"ee_delta": [[0.01, 0, 0], [0, 0.01, 0]]}),
            command(2, op="reset", options={"initial_torso": [0.1]}, robots=[1]),
            command(3, cmd={"ee_delta": [[0.0, 0.0, 0.01]]}, robots=[0])]
    bad = [two(5, q=Q), two(6, q=[Q, Q, Q]), two(7, dq=[0.0] * 11),
           command(4, cmd={"ee_delta": [0.01, 0, 0]}), command(5, cmd={"ee_delta": [[0.01, 0, 0]] * 2}, robots=[0]),
           command(6, cmd={"ee_delta": [[0.01, 0, 0]]}, robots=[2]), command(7, op="reset", robots=[0, 0])]
    path = write_mcap(tmp_path / "batch.mcap", [(S, s) for s in states + bad[:3]] + [(C, c) for c in good + bad[3:]],
                      info=info)
    rec = read_recording(path)
    assert rec.batch == 2 and rec.states == states and rec.commands == good
    assert rec.n_skipped == len(bad) and rec.invalid_cseqs == [4, 5, 6, 7]
    # replayed onto a batched server of 2: the partial reset and the one-robot step go to their robots
    batch = config.load("sim", {"server.kinematic": {"num_robots": 2}})
    again = tmp_path / "again.mcap"
    result = replay(path, batch, record=again)
    assert result.sent == result.total == 3 and result.skipped == len(bad)
    rerun = read_recording(again)
    assert [c.get("robots") for c in rerun.commands[1:]] == [None, [1], [0]] and rerun.n_skipped == 0


# -- the real CLI --------------------------------------------------------------------------------
@pytest.fixture
def combined(tmp_path):
    """One file holding every bad record (each numbered like the commands around it) between good ones."""
    records, good_cmds, cseq = [], [], 0
    goods = iter(GOOD_STATES + [state(i) for i in range(7, 7 + len(BAD))])
    for k, case in enumerate(BAD):
        records.append((S, next(goods)))
        cseq += 1
        c = command(cseq, op="command", cmd={"gripper": 0.01 * (k % 8)}) if k % 3 else command(cseq)
        records.append((C, c))
        good_cmds.append(c)
        bad = bad_payload(case, tmp_path)
        if case[1] == C and isinstance(bad, dict) and bad.get("cseq") == 3 and not isinstance(bad["cseq"], bool):
            cseq += 1
            bad = {**bad, "cseq": cseq}  # numbered where the server would have
        records.append((case[1], bad, *case[4:]))
    return write_mcap(tmp_path / "combined.mcap", records), good_cmds


def assert_no_traceback(res):
    assert "Traceback" not in res.stderr, res.stderr


def test_replay_and_plot_use_the_valid_records_of_a_crafted_file(combined, tmp_path):
    path, good_cmds = combined
    rec = read_recording(path)
    kinds = Counter()
    for key, n in rec.skipped.items():
        kinds[key.split("\0")[0]] += n
    assert rec.n_skipped == len(BAD) and rec.commands == good_cmds
    # replay: every valid command, nothing the server refuses, exit 3 (records were skipped)
    again = tmp_path / "again.mcap"
    res = cli("replay", path, "--through-gaps", "--speed", "8", "--record", again)
    assert_no_traceback(res)
    assert res.returncode == 3, res.stderr
    assert f"replayed {len(good_cmds)} of {len(good_cmds)} commands" in res.stdout
    assert f"{len(BAD)} invalid records skipped" in res.stdout
    assert res.stderr.count("warning: skipped") == 11 and "more invalid records, for" in res.stderr
    rerun = read_recording(again)
    assert rerun.n_skipped == 0 and [c["cmd"] for c in rerun.commands[1:]] == [c["cmd"] for c in good_cmds]
    # without --through-gaps: it stops before the first command skipped as invalid, and says so
    res = cli("replay", path, "--speed", "8")
    assert_no_traceback(res)
    first_bad = min(rec.invalid_cseqs)
    assert res.returncode == 3 and f"replayed {first_bad - 1} of {first_bad - 1} commands" in res.stdout
    assert "skipped as invalid records" in res.stderr
    # plot: draws the valid states, warns, exit 3
    png = tmp_path / "combined.png"
    res = cli("plot", path, "--out", png)
    assert_no_traceback(res)
    assert res.returncode == 3 and f"wrote {png}" in res.stdout and "warning: skipped" in res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    print(f"\ncrafted: {len(BAD)} kinds of bad record ({kinds[S]} state, {kinds[C]} command, "
          f"{sum(kinds.values()) - kinds[S] - kinds[C]} on other topics), one each among "
          f"{len(rec.states)} good states and {len(good_cmds)} good commands in one file; "
          f"{len(rec.skipped)} distinct reasons; replay sent {len(good_cmds)}, plot drew {len(rec.states)} states")


def test_unusable_files_are_a_one_line_error(combined, tmp_path):
    good = combined[0].read_bytes()
    files = {
        "not MCAP": b"robot-env recording, honest\n" * 10,
        "empty": b"",
        "magic only": good[:8],
        "cut in the first record": good[:20],
    }
    paths = {name: tmp_path / f"{name.replace(' ', '_')}.mcap" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    # a valid MCAP file with nothing valid in it: every record skipped
    paths["no valid record"] = write_mcap(tmp_path / "nothing.mcap", [(case[1], bad_payload(case, tmp_path), *case[4:])
                                                                     for case in BAD if case[1] in (S, C)])
    paths["someone else's MCAP"] = write_mcap(tmp_path / "foreign.mcap", [("/camera/info", {"width": 640})], info=None)
    paths["missing"] = tmp_path / "missing.mcap"
    expect = {"not MCAP": "not an MCAP recording", "empty": "empty", "magic only": "no robot-env recording",
              "cut in the first record": "no robot-env recording", "no valid record": "",
              "someone else's MCAP": "no robot-env recording", "missing": "cannot read"}
    for name, path in paths.items():
        for args in (("replay", path), ("plot", path, "--out", tmp_path / "x.png")):
            res = cli(*args)
            assert res.returncode == 2, (name, args[0], res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("robot-env: error: ") and expect[name] in lines[0], (
                name, args[0], res.stderr)
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(RecordingError, match="0 states recorded"):
        from robot_env.recording.plot import plot_recording
        plot_recording(paths["no valid record"], tmp_path / "x.png")


def test_plot_of_a_cut_file_draws_what_is_there_and_exits_3(tmp_path):
    records = [(S, state(i)) for i in range(1, 400)] + [(C, command(i)) for i in range(1, 40)]
    data = write_mcap(tmp_path / "whole.mcap", records, chunk_size=4096).read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:len(data) // 2])
    png = tmp_path / "cut.png"
    res = cli("plot", cut, "--out", png)
    assert_no_traceback(res)
    assert res.returncode == 3 and ("ends in the middle" in res.stderr or "not closed" in res.stderr) and png.exists()
    res = cli("plot", tmp_path / "whole.mcap", "--out", png)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr


# -- time jumps ----------------------------------------------------------------------------------
def jumpy_recording(tmp_path):
    """Ten steps 0.04 s apart, but the recorded time jumps one hour ahead after the 5th and half an
    hour back after the 8th (a clock stepped by NTP, a hand-edited file)."""
    ta = [T0 + 0.04 * i for i in range(5)] + [T0 + 3600 + 0.04 * i for i in range(5, 8)]
    ta += [ta[-1] - 1800 + 0.04 * i for i in range(1, 3)]
    cmds = [command(i + 1, ta=t, t=t - 0.001, t_recv=t + 0.001) for i, t in enumerate(ta)]
    return write_mcap(tmp_path / "jumpy.mcap", [(S, state(1, ts=T0 - 0.01, t_recv=T0 - 0.009))]
                      + [(C, c) for c in cmds]), len(cmds)


def test_a_forward_jump_waits_only_max_wait_and_a_backward_one_not_at_all(tmp_path):
    path, n = jumpy_recording(tmp_path)
    result = replay(path, max_wait=0.5)
    assert result.sent == result.total == n and not result.stopped
    assert result.jumps_capped == 1 and 3599 < result.longest_jump < 3601 and result.jumps_back == 1
    # the waits replay did: the capped one, and seven of (at most) the recorded 0.04 s
    assert 0 < result.longest_wait <= 0.5 and result.waited <= 0.5 + 7 * 0.04 + 1e-6
    assert result.duration < 30  # an hour's jump, replayed in well under a minute
    assert any("cut to it" in p and "3600.0 s" in p for p in result.problems)
    assert any("went back" in p for p in result.problems)
    # the CLI: exit 3 (the timing differs from the recording), the cap in its output; a hang would time out
    res = cli("replay", path, "--max-wait", "0.2", timeout=60)
    assert_no_traceback(res)
    assert res.returncode == 3 and f"replayed {n} of {n} commands" in res.stdout
    assert "1 waits cut to the 0.2 s max wait" in res.stdout and "1 backward jumps" in res.stdout
    assert "max wait" in res.stderr and "went back" in res.stderr
    for bad in ("-1", "nan", "soon"):
        res = cli("replay", path, "--max-wait", bad)
        assert res.returncode == 2 and "--max-wait" in res.stderr and "Traceback" not in res.stderr


def test_a_real_recording_is_written_with_the_schemas_the_reader_checks(tmp_path):
    """The schemas are written once: what the recorder registers in the file is what the reader checks."""
    from mcap.reader import make_reader

    from robot_env.bridge.session import Session
    path = tmp_path / "real.mcap"
    session = Session(None)
    try:
        with Recorder(session, path):
            session.client.reset(seed=1, options={"initial_torso": 0.2})
            for _ in range(5):
                session.client.step({"ee_delta": [0.01, 0.0, 0.0]})
    finally:
        session.close()
    with open(path, "rb") as fh:
        summary = make_reader(fh).get_summary()
    schemas = {s.name: json.loads(s.data) for s in summary.schemas.values()}
    assert schemas["robot_env.State"] == STATE_SCHEMA and schemas["robot_env.Command"] == COMMAND_SCHEMA
    rec = read_recording(path)
    assert not rec.problems and rec.n_skipped == 0 and len(rec.commands) == 6
    assert np.array(rec.states[-1]["q"]).shape == (11,)
