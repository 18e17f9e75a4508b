"""`robot-env bench --train`: wall-clock time to 95% evaluation success, SAC + HER on our env (embedded
simulator over the bridge) and on Gymnasium-Robotics' in-process FetchReach-v4, in the same run.

Both sides run the same file (`robot_env/sac_her.py`): the same SAC + HER hyper-parameters, the same
evaluation (20 deterministic seeded episodes every 1,000 steps on a separate env, evaluation time
counted in the wall clock), the same early stop. The anchor uses rl-baselines3-zoo's FetchReach
settings (normalized observations and the time feature); ours uses `robot-env train`'s defaults.
They run one after the other, never at once (a 2-core machine: our server needs the second core).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

from . import anchor_env
from .bench import anchor_id

ENV_ID = "robot_env/FetchReach-v0"


def _ours(steps: int, seed: int) -> dict:
    from ..training import train as train_mod
    from ..training.sac_her import train_loop

    def mk(evaluating):
        return train_mod.make_env(None, None, time_feature=train_mod.DEFAULT_TIME_FEATURE)

    def log(n, total, rate, wall):
        print(f"  ours robot_env/FetchReach-v0: {n:>6}/{total} steps  eval success {rate:5.0%}  {wall:6.1f} s",
              file=sys.stderr, flush=True)

    _, _, result = train_loop(mk, steps, seed=seed, normalize=train_mod.DEFAULT_NORMALIZE, log=log)
    result.update(env="robot_env/FetchReach-v0", time_feature=train_mod.DEFAULT_TIME_FEATURE)
    return result


def _anchor(steps: int, seed: int, python: str) -> tuple[dict | None, str | None]:
    from ..training import sac_her
    script = os.path.abspath(sac_her.__file__)
    gr_id = anchor_id(ENV_ID)
    args = json.dumps({"env": gr_id, "steps": steps, "seed": seed, "normalize": True,
                       "time_feature": True})
    with tempfile.TemporaryFile() as err:
        try:
            # The script's own directory goes first on sys.path: keep it from shadowing anything by
            # running it with -c from its source instead of by path.
            src = open(script).read()
            proc = subprocess.run([python, "-c", src, args], stdout=subprocess.PIPE, stderr=err,
                                  timeout=60 + 0.1 * steps, env=anchor_env.child_env(python), check=False)
        except FileNotFoundError:
            return None, f"{python!r} does not exist"
        except subprocess.TimeoutExpired:
            return None, f"{gr_id} training timed out"
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    for line in stderr.splitlines():
        if line.startswith("  anchor"):
            print(line, file=sys.stderr, flush=True)
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line), None
    tail = "\n".join("    " + ln for ln in stderr.strip().splitlines()[-6:])
    return None, f"{gr_id} training failed in {python} (exit {proc.returncode}):\n{tail}"


def _fmt(r: dict | None) -> tuple[str, str, str]:
    if r is None:
        return "not run", "—", "—"
    if not r["reached_threshold"]:
        return f"not reached in {r['steps']} steps", f"> {r['wall_s']:.1f}", f"{r['final_success']:.0%}"
    return f"{r['steps_to_threshold']:,}", f"{r['wall_s_to_threshold']:.1f}", f"{r['final_success']:.0%}"


def run_bench_train(steps: int = 30_000, seed: int = 0, anchor_python: str | None = None, anchor: bool = True,
                    out=None) -> int:
    from ..training import require_sb3
    require_sb3()
    print(f"robot-env bench --train: SAC+HER to 95% eval success (20 episodes every 1,000 steps), seed {seed}, "
          f"at most {steps} steps per side; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          "one torch thread", flush=True)
    res = {"seed": seed, "max_steps": steps, "cpus": os.cpu_count(), "platform": platform.platform()}
    res["anchor"], res["anchor_note"], res["anchor_python"] = (None, "skipped (--no-anchor)", None)
    if anchor:
        # the anchor Python is picked first: a missing one is said before minutes of training
        python, res["anchor_note"] = anchor_env.pick(anchor_python, train=True)
        res["anchor_python"] = python
        print(f"  anchor {anchor_id(ENV_ID)} in {python}" if python else
              f"  note: the anchor will not run: {res['anchor_note']}", flush=True)
    res["ours"] = _ours(steps, seed)
    if anchor and res["anchor_python"]:
        res["anchor"], res["anchor_note"] = _anchor(steps, seed, res["anchor_python"])
    o, a = res["ours"], res["anchor"]
    rows = [("robot_env/FetchReach-v0 (embedded sim over ipc)",) + _fmt(o),
            ("FetchReach-v4 in-process (rl-zoo settings, anchor)",) + _fmt(a)]
    print()
    print(f"{'':52}{'steps to 95%':>16}{'wall s to 95%':>16}{'final eval':>12}")
    for r in rows:
        print(f"{r[0]:52}{r[1]:>16}{r[2]:>16}{r[3]:>12}")
    ratio = None
    if a and o["reached_threshold"] and a["reached_threshold"]:
        ratio = o["wall_s_to_threshold"] / a["wall_s_to_threshold"]
        steps_ratio = o["steps_to_threshold"] / a["steps_to_threshold"]
        per_step = (o["wall_s_to_threshold"] / o["steps_to_threshold"]) / (a["wall_s_to_threshold"] / a["steps_to_threshold"])
        word = "faster" if ratio < 1 else "slower"
        print(f"\nours / anchor wall-clock time to 95%: {ratio:.2f} (ours {word}); steps ratio {steps_ratio:.2f}, "
              f"wall time per step ratio {per_step:.2f}")
        res["ratio"] = {"wall": ratio, "steps": steps_ratio, "per_step": per_step}
    elif not a:
        note = res["anchor_note"]
        hint = "" if "anchor-env" in note or "--no-anchor" in note else f"\n  to include it: {anchor_env.hint(train=True)}"
        print(f"\nnote: anchor not run: {note}{hint}")
    if out:
        with open(out, "w") as fh:
            json.dump(res, fh, indent=2)
            fh.write("\n")
        print(f"wrote {out}")
    return 0 if o["reached_threshold"] else 1
