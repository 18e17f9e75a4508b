"""Peers that never read cost the server bounded memory (issue 11).

Lazy clients send requests and never read a reply; stalled subscribers never read the stream. With
ZeroMQ's default queues (1,000 messages per peer) that cost ~1.3 MB per lazy client on a single
server and ~240 MB per lazy peer on a 512-robot batched server. The server now sizes its queues in
bytes (`server.PEER_REPLY_BYTES`, `PEER_STREAM_BYTES`), counts the replies it drops, and keeps
serving everyone else. Figures go to `<pytest tmp dir>/figures/peer_memory.json` and are printed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from robot_env import config as config_mod
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.server import PEER_REPLY_BYTES, PEER_STREAM_BYTES
from robot_env.bridge.spawn import ServerProcess

pytestmark = pytest.mark.timeout(240)
FIGURES: dict = {}
SLACK = 16 << 20  # allocator and interpreter noise on top of the per-peer bound


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise RuntimeError("no VmRSS")


def lazy_peer(ctx, endpoint):
    """A DEALER that queues as little as possible on its own side (so the backlog sits on the server)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(endpoint)
    return s


def flood(peers, op: str, n: int) -> int:
    sent = 0
    for i in range(n):
        msg = protocol.encode({"v": protocol.VERSION, "op": op, "seq": i})
        for s in peers:
            try:
                s.send(msg, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
    return sent


def _settle(client, pid, rounds=20) -> int:
    """The server's RSS once it has worked through what is queued (its own requests answered)."""
    for _ in range(rounds):
        client.state()
    return rss(pid)


@pytest.mark.parametrize("robots,peers,requests", [(1, 150, 1200), (64, 20, 150)], ids=["single", "batched64"])
def test_lazy_clients_cost_bounded_memory_and_everyone_else_is_served(robots, peers, requests, ctx, tmp_path_factory):
    over = {"server.kinematic": {"num_robots": robots}} \
        if robots > 1 else {}
    sp = ServerProcess(config_mod.load("sim", over))
    lazies = []
    try:
        with RobotClient(sp.endpoint, timeout=30.0) as c:
            info = c.hello()
            pid = info["pid"]
            queue = info["peer_queue"]
            c.reset(seed=0)
            base = _settle(c, pid)
            lazies = [lazy_peer(ctx, sp.endpoint) for _ in range(peers)]
            sent = flood(lazies, "state", requests)
            for _ in range(3000):  # until the server has worked through the flood
                if c.hello()["stats"]["requests"] >= sent:
                    break
            grown = _settle(c, pid) - base
            stats = c.hello()["stats"]
            bound = peers * (PEER_REPLY_BYTES + (64 << 10)) + SLACK
            FIGURES[f"lazy_clients_{robots}_robots"] = {
                "peers": peers, "requests_sent": sent, "reply_queue_per_peer": queue["replies"],
                "server_rss_growth_mb": round(grown / 2**20, 1), "bound_mb": round(bound / 2**20, 1),
                "dropped_replies": stats["dropped_replies"], "per_peer_kb": round(grown / peers / 1024, 1)}
            assert grown < bound, FIGURES[f"lazy_clients_{robots}_robots"]
            assert stats["dropped_replies"] > 0  # counted, not silently lost
            # everyone else is served: a normal client steps as usual
            cmd = {"ee_delta": np.zeros((robots, 3))} if robots > 1 else {"ee_delta": [0.0, 0.0, 0.01]}
            st = c.step(cmd)
            assert st["mode"] == "ok"
    finally:
        for s in lazies:
            s.close(0)
        sp.close()
        _dump(tmp_path_factory)


def test_stalled_subscribers_cost_bounded_memory(ctx, tmp_path_factory):
    robots, subs_n, steps = 64, 6, 3000
    sp = ServerProcess(config_mod.load("sim", {"server.kinematic": {"num_robots": robots}}))
    subs = []
    try:
        with RobotClient(sp.endpoint, timeout=30.0) as c:
            info = c.hello()
            pid = info["pid"]
            c.reset(seed=0)
            base = _settle(c, pid)
            for _ in range(subs_n):
                s = ctx.socket(zmq.SUB)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RCVHWM, 1)
                s.setsockopt(zmq.RCVBUF, 4096)
                s.setsockopt(zmq.SUBSCRIBE, b"state")
                s.connect(info["stream_endpoint"])
                subs.append(s)
            for _ in range(50):  # until the server has seen every subscription
                c.state()
            cmd = {"ee_delta": np.zeros((robots, 3))}
            for _ in range(steps):
                c.step(cmd)
            grown = _settle(c, pid) - base
            bound = subs_n * (PEER_STREAM_BYTES + (64 << 10)) + SLACK
            state_kb = len(protocol.encode(c.state())) / 1024
            FIGURES["stalled_subscribers_64_robots"] = {
                "subscribers": subs_n, "states_published": steps, "state_kb": round(state_kb, 1),
                "stream_queue_per_subscriber": info["peer_queue"]["states"],
                "server_rss_growth_mb": round(grown / 2**20, 1), "bound_mb": round(bound / 2**20, 1)}
            assert grown < bound, FIGURES["stalled_subscribers_64_robots"]
            # a subscriber that reads gets the stream (numbered: a slow one sees its gaps)
            live = ctx.socket(zmq.SUB)
            live.setsockopt(zmq.SUBSCRIBE, b"state")
            live.connect(info["stream_endpoint"])
            for _ in range(50):
                c.state()
            c.step(cmd)
            assert live.poll(2000)
            live.close(0)
    finally:
        for s in subs:
            s.close(0)
        sp.close()
        _dump(tmp_path_factory)


def _dump(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "figures"
    out.mkdir(exist_ok=True)
    (out / "peer_memory.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
    print(f"\nFIGURES peer_memory:\n{json.dumps(FIGURES, indent=2, sort_keys=True)}")
