"""Soak (issue 7, item 5): a server stepped continuously, on the realtime clock (at the control rate) and on
the lockstep clock (at full speed), while clients connect and disconnect: a new RobotClient every K steps
(some closed, some abandoned without `close`), and client processes SIGKILLed mid-request. The server
process's RSS (/proc/PID/status VmRSS) and open fds (/proc/PID/fd) are sampled throughout: after a
warm-up, memory stays flat (last third within a small margin of the first third) and the fd count
comes back to its baseline once the clients are gone.

Default: a short run per clock (SOAK_DEFAULT_SECONDS). The long run is marked slow and lasts
ROBOT_ENV_SOAK_SECONDS (default 3600) in all, split between the two clocks:
    python -m pytest -m slow tests/test_soak.py
Figures go to `<pytest tmp dir>/figures/soak_<clock>.json` and are printed (`pytest -s`).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from support import wait_for

from robot_env import config
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess

SOAK_DEFAULT_SECONDS = 12.0
CHURN_EVERY = {"realtime": 5, "lockstep": 100}  # steps between new clients (realtime: 25 steps/s)
RSS_MARGIN_KB = 2048  # or 5 %, whichever is larger

KILLED_CLIENT = textwrap.dedent("""
    import sys, time
    from robot_env.bridge.client import RobotClient
    c = RobotClient(sys.argv[1], timeout=2.0)
    c.hello()
    print("up", flush=True)
    while True:
        c.state()
        time.sleep(0.002)
""")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(clock: str, duration: float, tmp_path_factory) -> dict:
    sp = ServerProcess(config.load("sim", {"server": {"clock": clock}}))
    pid = sp.proc.pid
    child = None
    counts = {"steps": 0, "clients": 0, "abandoned": 0, "killed": 0}
    samples = []  # (t, rss kB, fds)
    try:
        ctl = RobotClient(sp.endpoint, timeout=5.0)
        ctl.hello()
        ctl.reset(seed=0)
        base_fds = nfds(pid)
        k = CHURN_EVERY[clock]
        t0 = time.monotonic()
        next_sample = t0
        child_up = 0.0
        while (now := time.monotonic()) - t0 < duration:
            sign = 1.0 if (counts["steps"] // 20) % 2 == 0 else -1.0
            st = ctl.step({"ee_delta": [0.0, sign * 0.01, 0.0]})
            assert st["mode"] == "ok"
            counts["steps"] += 1
            if counts["steps"] % k == 0:  # a client comes and goes
                c = RobotClient(sp.endpoint, timeout=5.0)
                assert c.hello()["backend"] == "kinematic"
                assert c.state()["mode"] == "ok"
                counts["clients"] += 1
                if counts["clients"] % 3 == 0:  # abandoned: no close, its socket just goes away
                    c.sock.close(0)
                    c.sock = None
                    counts["abandoned"] += 1
                else:
                    c.close()
            # a client process: started, then SIGKILLed mid-request once it has run for a while
            if child is None:
                child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, sp.endpoint],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                child_up = 0.0
            elif not child_up:
                if select.select([child.stdout], [], [], 0)[0]:
                    assert child.stdout.readline() == b"up\n"
                    child_up = now
                assert child.poll() is None
            elif now - child_up > 0.5:
                child.kill()
                child.wait(5)
                child.stdout.close()
                child = None
                counts["killed"] += 1
            if now >= next_sample:
                samples.append((now - t0, rss_kb(pid), nfds(pid)))
                next_sample += 0.2
        elapsed = time.monotonic() - t0
        if child is not None:
            child.kill()
            child.wait(5)
            child.stdout.close()
            child = None
            counts["killed"] += 1
        # every client gone but the controller: the fd count comes back to the baseline
        back = wait_for(lambda: nfds(pid) == base_fds, timeout=5.0)
        end_fds = nfds(pid)
        assert ctl.step({"ee_delta": [0.0, 0.0, 0.0]})["mode"] == "ok"  # still serving
        ctl.close()
        assert sp.alive()
    finally:
        if child is not None:
            child.kill()
            child.wait(5)
        sp.close()
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples], dtype=float)
    fds = np.array([s[2] for s in samples])
    warm = t >= min(max(2.0, 0.2 * duration), 0.4 * duration)  # after the warm-up
    r = rss[warm]
    third = max(1, len(r) // 3)
    first, last = float(r[:third].mean()), float(r[-third:].mean())
    figures = {"clock": clock, "seconds": round(elapsed, 1), **counts,
               "steps_per_s": round(counts["steps"] / elapsed, 1), "samples": len(samples),
               "rss_kb_start": int(rss[0]), "rss_kb_first_third": round(first), "rss_kb_last_third": round(last),
               "rss_kb_end": int(rss[-1]), "rss_kb_max": int(rss.max()),
               "fds_baseline": base_fds, "fds_max": int(fds.max()), "fds_end": end_fds}
    out = tmp_path_factory.getbasetemp() / "figures"
    out.mkdir(exist_ok=True)
    (out / f"soak_{clock}.json").write_text(json.dumps(figures, indent=2))
    print(f"\nFIGURES soak_{clock} ({out / f'soak_{clock}.json'}):\n{json.dumps(figures, indent=2)}")
    assert counts["clients"] >= 10 and counts["killed"] >= 2, counts
    assert last <= first + max(RSS_MARGIN_KB, 0.05 * first), f"RSS grew: {first:.0f} -> {last:.0f} kB"
    assert back, f"fds did not come back to the baseline {base_fds}: {end_fds}"
    assert fds.max() <= base_fds + 20, f"fds peaked at {fds.max()} (baseline {base_fds})"
    return figures


@pytest.mark.timeout(60)
@pytest.mark.parametrize("clock", ["realtime", "lockstep"])
def test_soak_short(clock, tmp_path_factory):
    soak(clock, SOAK_DEFAULT_SECONDS, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.timeout(0)  # as long as ROBOT_ENV_SOAK_SECONDS asks
@pytest.mark.parametrize("clock", ["realtime", "lockstep"])
def test_soak_long(clock, tmp_path_factory):
    total = float(os.environ.get("ROBOT_ENV_SOAK_SECONDS", "3600"))
    soak(clock, total / 2, tmp_path_factory)
