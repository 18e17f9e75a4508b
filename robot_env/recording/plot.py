"""`robot-env plot`: a PNG of a recording's joint trajectories against their targets, and its latencies.

Matplotlib (the `plot` extra), drawn off-screen (Agg), so it runs on a machine without a display.
Top: one panel per joint, measured position (`q`) solid and the commanded target (`target`, after
the safety layer) dashed, over time since the first state; e-stop/fault periods shaded; command
times ticked along the bottom of each panel. Bottom: the latency distributions from the recorded
stamps (`Recording.latencies`): state sampled -> received by the recorder, command applied -> next
state sampled, client sent -> applied, with their p50/p99.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Recording, RecordingError, read_recording

_UNITS = {"torso_lift_joint": "m", "gripper_joint": "m"}


def plot_recording(source, out=None, *, dpi: int = 100, robot: int = 0) -> Path:
    """Draw the recording (a path or a `Recording`) to a PNG; returns the PNG's path.

    A batched server's recording (N robots per state) is drawn for one robot, `robot`.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecordingError("plotting needs matplotlib: pip install 'robot-env[plot]'") from None
    rec = source if isinstance(source, Recording) else read_recording(source)
    if len(rec.states) < 2:
        raise RecordingError(f"{rec.path}: {len(rec.states)} states recorded; nothing to plot"
                             + (f" ({rec.skip_summary()})" if rec.skipped else ""))
    out = Path(out) if out is not None else Path(rec.path).with_suffix(".png")
    ts = rec.array("ts")
    t, xlabel = _time_axis(rec, ts)
    q = rec.array("q")
    # a state without a target (the schema does not require one) draws a gap in the dashed line
    target = np.array([s["target"] if "target" in s else np.full(q.shape[1:], np.nan) for s in rec.states], dtype=float)
    which = f", robot {robot} of {q.shape[1]}" if q.ndim == 3 else ""
    if q.ndim == 3:  # (time, robot, joint): a batched server
        if not 0 <= robot < q.shape[1]:
            raise RecordingError(f"{rec.path}: robot {robot} not recorded; it holds robots 0..{q.shape[1] - 1}")
        q, target = q[:, robot], target[:, robot]
    elif robot:
        raise RecordingError(f"{rec.path}: a one-robot recording; there is no robot {robot}")
    names = list(rec.info.get("joint_names") or [f"joint {i}" for i in range(q.shape[1])])
    modes = [s.get("mode", "ok") for s in rec.states]
    # commands on the same axis: at the time of the state sampled just before each was applied
    cmd_ta = np.array([c["ta"] for c in rec.commands if c.get("ta") is not None])
    order = np.argsort(ts, kind="stable")
    idx = np.clip(np.searchsorted(ts[order], cmd_ta, side="right") - 1, 0, len(ts) - 1)
    cmd_t = t[order][idx] if cmd_ta.size else cmd_ta

    nj = q.shape[1]
    cols = 4
    rows = -(-nj // cols)
    fig = plt.figure(figsize=(4.2 * cols, 2.4 * rows + 3.6), dpi=dpi)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.35], hspace=0.55, wspace=0.3)
    for j in range(nj):
        ax = fig.add_subplot(grid[j // cols, j % cols])
        ax.plot(t, q[:, j], color="C0", lw=1.3, label="q (measured)")
        ax.plot(t, target[:, j], color="C3", lw=1.0, ls="--", label="target")
        _shade_modes(ax, t, modes)
        if cmd_t.size:
            lo, hi = ax.get_ylim()
            ax.plot(cmd_t, np.full(cmd_t.shape, lo + 0.02 * (hi - lo)), "|", color="0.5", ms=4,
                    label="command applied")
            ax.set_ylim(lo, hi)
        name = names[j] if j < len(names) else f"joint {j}"
        ax.set_title(f"{name.removesuffix('_joint')} [{_UNITS.get(name, 'rad')}]", fontsize=9)
        ax.tick_params(labelsize=7)
        if j // cols == rows - 1 or j + cols >= nj:
            ax.set_xlabel(xlabel, fontsize=8)
        if j == 0:
            ax.legend(fontsize=7, loc="best")

    lat = rec.latencies()
    panels = (("stream", "state sampled → received"), ("apply_to_state", "command applied → next state"),
              ("send_to_apply", "client sent → command applied"))
    lat_grid = grid[rows, :].subgridspec(1, 3, wspace=0.25)
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(lat_grid[0, k])
        ms = np.asarray(lat.get(key, []), dtype=float) * 1e3
        ms = ms[np.isfinite(ms)]
        if ms.size:
            pos = ms[ms > 0]
            if pos.size and pos.max() / max(pos.min(), 1e-6) > 50:
                bins = np.logspace(np.log10(max(pos.min(), 1e-3)), np.log10(pos.max()), 40)
                ax.set_xscale("log")
            else:
                bins = 40
            ax.hist(ms, bins=bins, color="C2")
            p50, p99 = np.percentile(ms, [50, 99])
            for v, style in ((p50, "-"), (p99, ":")):
                ax.axvline(v, color="k", ls=style, lw=1)
            ax.set_title(f"{title}\nn={ms.size}  p50 {p50:.3f} ms  p99 {p99:.3f} ms", fontsize=9)
        else:
            ax.set_title(f"{title}\n(no samples)", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    s_gaps, c_gaps = rec.gaps()
    info = rec.info
    head = (f"{Path(rec.path).name}: {info.get('backend', '?')} backend{which}, {info.get('clock', '?')} clock, "
            f"{t[-1] - t[0]:.1f} s, {len(rec.states)} states, {len(rec.commands)} commands, "
            f"{s_gaps.gaps} state gaps ({s_gaps.lost} missing)")
    if rec.problems:
        head += "\n" + ("DAMAGED: " if rec.damaged else "") + rec.problems[0][:150]
    fig.suptitle(head, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _time_axis(rec: Recording, ts: np.ndarray):
    """Wall time since the first state; on the lockstep clock, where wall time means nothing to the
    robot, the backend's own time, accumulated across resets (which set it back to zero)."""
    if rec.info.get("clock") == "lockstep" and all("time" in s for s in rec.states):
        bt = rec.array("time")
        step = np.diff(bt, prepend=bt[0])
        return np.cumsum(np.where(step > 0, step, 0.0)), "backend time [s] (lockstep; resets joined)"
    return ts - ts[0], "time [s]"


def _shade_modes(ax, t, modes) -> None:
    """Shade the time spans where the robot was not `ok` (e-stop red, fault orange, watchdog grey)."""
    colors = {"estop": "red", "fault": "orange", "watchdog": "0.7"}
    start = None
    for i, m in enumerate(modes + ["ok"]):
        cur = modes[start] if start is not None else None
        if start is not None and m != cur:
            ax.axvspan(t[start], t[min(i, len(t) - 1)], color=colors.get(cur, "0.85"), alpha=0.25, lw=0)
            start = None
        if start is None and m != "ok" and i < len(modes):
            start = i
