"""Running latency percentiles in O(1) per sample: a log-spaced histogram (2% bins, 1 µs .. 100 s)."""
from __future__ import annotations

import math

import numpy as np

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

    def add_many(self, seconds) -> None:
        """`add` for a batch of samples, vectorized."""
        v = np.asarray(seconds, dtype=np.float64)
        if not v.size:
            return
        idx = np.zeros(v.shape, np.int64)
        pos = v > _LO
        idx[pos] = (np.log(v[pos] / _LO) * _K).astype(np.int64) + 1
        np.minimum(idx, _NBINS - 1, out=idx)
        counts = self.counts
        for i, c in zip(*np.unique(idx, return_counts=True)):
            counts[i] += int(c)
        self.n += int(v.size)
        self.total += float(v.sum())
        vmax = float(v.max())
        if vmax > self.max:
            self.max = vmax

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

    `record` runs on every request, so it only appends the two durations; they are folded into
    the histograms in batches of `FOLD` (and whenever the histograms are read): O(1) amortized
    per sample, bounded memory.
    """

    FOLD = 256
    _NAMES = ("rtt", "bridge", "server", "action_to_obs")

    def __init__(self):
        self._hists = {name: Histogram() for name in self._NAMES}
        self._pending: list = []

    def record(self, op: str, t_send: float, t_recv: float, reply: dict) -> None:
        p = self._pending
        p.append((t_recv - t_send, reply["tx"] - reply["tr"], op == "step"))
        if len(p) >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        h = self._hists
        if len(pending) < 16:  # a few samples (histograms read often): numpy would cost more
            for rtt, held, is_step in pending:
                h["rtt"].add(rtt)
                h["server"].add(held)
                h["bridge"].add(rtt - held if rtt > held else 0.0)
                if is_step:
                    h["action_to_obs"].add(rtt)
            return
        a = np.array(pending, dtype=np.float64)
        rtt, held = a[:, 0], a[:, 1]
        h["rtt"].add_many(rtt)
        h["server"].add_many(held)
        h["bridge"].add_many(np.where(rtt > held, rtt - held, 0.0))
        h["action_to_obs"].add_many(rtt[a[:, 2] != 0.0])

    def __getattr__(self, name):  # rtt, bridge, server, action_to_obs: the histograms, up to date
        if name in LatencyStats._NAMES:
            if self._pending:
                self._fold()
            return self._hists[name]
        raise AttributeError(name)

    def summary(self) -> dict:
        return {name: getattr(self, name).summary() for name in self._NAMES}

    def reset(self) -> None:
        self.__init__()
