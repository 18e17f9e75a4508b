"""Running latency percentiles in O(1) per sample: a log-spaced histogram (2% bins, 1 µs .. 100 s)."""
from __future__ import annotations

import math

_LO = 1e-6
_GROWTH = 1.02
_K = 1.0 / math.log(_GROWTH)
_NBINS = int(math.log(1e2 / _LO) * _K) + 2


class Histogram:
    __slots__ = ("counts", "n", "total", "max")

    def __init__(self):
        self.counts = [0] * _NBINS
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        i = int(math.log(seconds / _LO) * _K) + 1 if seconds > _LO else 0
        self.counts[i if i < _NBINS else _NBINS - 1] += 1
        self.n += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, p: float) -> float:
        """Upper edge of the bin holding the p-th percentile (within 2%); nan when empty."""
        if not self.n:
            return math.nan
        rank = p / 100.0 * self.n
        acc = 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= rank and c:
                return min(_LO * _GROWTH ** i, self.max)
        return self.max

    def summary(self) -> dict:
        return {"n": self.n, "mean_ms": 1e3 * self.total / self.n if self.n else math.nan,
                "p50_ms": 1e3 * self.percentile(50), "p90_ms": 1e3 * self.percentile(90),
                "p99_ms": 1e3 * self.percentile(99), "max_ms": 1e3 * self.max}


class LatencyStats:
    """What the client measures from each reply's stamps.

    rtt: request sent -> reply received (client clock). server: time the server held the request
    (its clock). bridge: rtt - server, what transport and serialization add. action_to_obs: for
    `step`, from the action leaving the client to the observation it caused arriving (includes the
    control period on the realtime clock).
    """

    def __init__(self):
        self.rtt = Histogram()
        self.server = Histogram()
        self.bridge = Histogram()
        self.action_to_obs = Histogram()

    def record(self, op: str, t_send: float, t_recv: float, reply: dict) -> None:
        rtt = t_recv - t_send
        held = reply["tx"] - reply["tr"]
        self.rtt.add(rtt)
        self.server.add(held)
        self.bridge.add(rtt - held if rtt > held else 0.0)
        if op == "step":
            self.action_to_obs.add(rtt)

    def summary(self) -> dict:
        return {name: getattr(self, name).summary() for name in ("rtt", "bridge", "server", "action_to_obs")}

    def reset(self) -> None:
        self.__init__()
