"""`robot-env train` and `robot-env run`: SAC + HER on the simulator, a policy bundle, and running it on
any backend a config names, after checking the bundle against the server's `hello`.

A bundle is a directory, with nothing in it that is unpickled on load:
    policy.pt           the SAC policy's weights (a tensor state dict, read with torch.load(weights_only=True))
    normalization.json  observation normalization statistics (only when trained with normalization)
    metadata.json       env id, control mode, control period, action scale, robot description hash,
                        observation/action spaces, network shape, training steps, wall time, final success
    learning_curve.png  evaluation success vs training steps (also in metadata.json as numbers)
SB3's own `model.zip` and `VecNormalize.save` files are pickles (cloudpickle inside the zip), and a
policy file is something users pass around: loading one must not run code.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from ..errors import RobotEnvError

ENV_ID = "robot_env/FetchReach-v0"
BUNDLE_VERSION = 1
FILES = ("policy.pt", "metadata.json")
# `robot-env train`'s defaults (also what `bench --train` measures for our side)
DEFAULT_NORMALIZE = True   # observation normalization: 3k steps to 95% instead of 10k
DEFAULT_TIME_FEATURE = False
# The sim-to-real knobs `train --sim2real` turns on when the config leaves them off: one step of
# action latency (a real bus answers a period late), joint noise about an encoder tick and a half,
# and up to 20% slower joints (loaded servos).
SIM2REAL_DEFAULTS = {"action_latency_steps": 1, "observation_noise": 0.002, "speed_randomization": 0.2}


class BundleError(RobotEnvError):
    """A policy bundle is missing, corrupt, or does not fit the robot/env it is asked to run on."""


from . import TRAIN_HINT  # noqa: F401  (both kept importable from here)
from . import require_sb3 as _require_sb3


# -- spaces as data ---------------------------------------------------------------------------
def space_to_dict(space) -> dict:
    from gymnasium import spaces
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": float(np.min(space.low)), "high": float(np.max(space.high))}
    return {"type": type(space).__name__, "repr": repr(space)}


def env_metadata(env) -> dict:
    """What a policy depends on, from the env (its id and task) and its server's `hello`."""
    u = env.unwrapped
    info = u._session.info
    task = u.task
    env_id = env.spec.id if getattr(env, "spec", None) is not None else ENV_ID
    return {"env_id": env_id, "control": task.control, "block_gripper": task.block_gripper,
            "reward_type": task.reward_type, "control_period": float(info["control_period"]),
            "action_scale": task.action_scale, "max_ee_step": info.get("max_ee_step"),
            "description_hash": info["description_hash"],
            "observation_space": space_to_dict(env.observation_space),
            "action_space": space_to_dict(env.action_space)}


# -- environments -----------------------------------------------------------------------------
def sim2real_overrides(cfg_name, enable: bool) -> dict:
    """`overrides` for gym.make: the config's [server.kinematic] knobs, or defaults where they are 0."""
    if not enable:
        return {}
    from .. import config as config_mod
    cfg = config_mod.load(cfg_name)
    if cfg["server"]["backend"] != "kinematic":
        raise RobotEnvError(f"--sim2real randomizes the kinematic simulator; config {cfg['source']} names the "
                            f"{cfg['server']['backend']!r} backend")
    kin = cfg.get("server.kinematic", {})
    return {"server.kinematic": {k: (kin.get(k) or v) for k, v in SIM2REAL_DEFAULTS.items()}}


def make_env(config=None, overrides=None, control="ee_delta", time_feature=False, env_id: str = ENV_ID):
    import gymnasium as gym

    import robot_env  # noqa: F401  (registers the env)

    from .sac_her import TimeFeature
    env = gym.make(env_id, config=config, overrides=overrides or None, control=control)
    return TimeFeature(env) if time_feature else env


# -- train ------------------------------------------------------------------------------------
def _progress(n, total, rate, wall, stream=sys.stderr):
    width = 24
    filled = int(width * min(n, total) / total)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {n:>7}/{total} steps  eval success {rate:5.0%}"
                 f"  {wall:6.1f} s  {n / max(wall, 1e-9):5.0f} steps/s")
    stream.flush()


def train(config=None, steps: int = 30_000, out: str = "policy", seed: int = 0, eval_every: int = 1000,
          eval_episodes: int = 20, sim2real: bool = False, normalize: bool = DEFAULT_NORMALIZE,
          time_feature: bool = DEFAULT_TIME_FEATURE, num_envs: int = 1,
          threshold: float = 0.95, log=_progress, env_id: str = ENV_ID, demos: int = 0, **hyper) -> dict:
    """Train SAC + HER on env `env_id` over the robot a config names (default: the embedded simulator);
    write a bundle to `out`.

    `num_envs` > 1: N robots behind one simulator server (`envs.sb3_vec_env.BridgeVecEnv`).
    `demos` > 0: that many episodes of the task's scripted agent (`apps.scripted`) seed the replay buffer.
    """
    _require_sb3()
    from ..envs.registration import entry
    from .sac_her import OBJECT_HYPERPARAMS
    if entry(env_id).task.has_object:  # the object tasks' settings, under what the caller chose
        hyper = {**OBJECT_HYPERPARAMS, **hyper}
    overrides = sim2real_overrides(config, sim2real)
    if num_envs > 1 and time_feature:
        raise RobotEnvError("--time-feature is not available with --num-envs > 1")
    if demos < 0:
        raise RobotEnvError(f"--demos must be >= 0, got {demos}")
    if demos:
        from ..apps.scripted import for_env
        hyper["demo_agent"] = for_env(env_id)

    def make_venv():
        from ..envs.sb3_vec_env import BridgeVecEnv
        return BridgeVecEnv(env_id, num_envs, config=config, overrides=overrides or None)

    return train_bundle(lambda: make_env(config, overrides, time_feature=time_feature, env_id=env_id),
                        make_venv if num_envs > 1 else None, out, steps,
                        seed=seed, eval_every=eval_every, eval_episodes=eval_episodes, threshold=threshold,
                        normalize=normalize, time_feature=time_feature, log=log,
                        meta_extra={"config": str(config or "sim"), "num_envs": num_envs,
                                    "sim2real": overrides.get("server.kinematic"), "demos": demos},
                        demos=demos, **hyper)


def train_bundle(make_single_env, make_venv, out: str, steps: int, *, seed: int, eval_every: int,
                 eval_episodes: int, threshold: float, normalize: bool, time_feature: bool, log,
                 meta_extra: dict, **hyper) -> dict:
    """The one training path of `train` and the Ray scale-out: `sac_her.train_loop`, then the bundle.

    `make_single_env()` gives a single env (evaluation; training too when `make_venv` is None), whose
    server's `hello` the bundle's metadata is taken from; every env opened is closed.
    """
    from .sac_her import train_loop

    opened: list = []
    singles: list = []

    def mk(evaluating):
        env = make_single_env()
        opened.append(env)
        singles.append(env)
        return env

    def mv():
        venv = make_venv()
        opened.append(venv)
        return venv

    t0 = time.perf_counter()
    try:
        model, vecnorm, result = train_loop(mk, steps, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
                                            threshold=threshold, normalize=normalize, log=log,
                                            make_venv=mv if make_venv is not None else None, **hyper)
        if log is _progress:
            sys.stderr.write("\n")
        meta = env_metadata(singles[0])
    finally:
        for env in opened:
            env.close()
    meta.update({"bundle_version": BUNDLE_VERSION, "algorithm": "SAC+HER (stable-baselines3)",
                 "time_feature": time_feature, "normalize": normalize, **meta_extra,
                 "training": {k: v for k, v in result.items() if k != "curve"},
                 "learning_curve": result["curve"], "total_wall_s": time.perf_counter() - t0,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    save_bundle(out, model, vecnorm, meta)
    return meta


def report_training(meta: dict, out: str, note: str = "") -> int:
    """Print how training ended (the CLI's summary); exit status 0 when it reached the threshold."""
    t = meta["training"]
    if t["reached_threshold"]:
        print(f"stopped early: eval success {t['final_success']:.0%} ≥ {t['threshold']:.0%} after "
              f"{t['steps_to_threshold']} steps, {t['wall_s_to_threshold']:.1f} s")
    else:
        print(f"did not reach {t['threshold']:.0%} in {t['steps']} steps: final eval success "
              f"{t['final_success']:.0%} ({t['wall_s']:.1f} s); try more --steps")
    if meta.get("sim2real"):
        print(f"sim2real: {meta['sim2real']}")
    print(f"policy bundle  {out}/ (policy.pt, metadata.json{', normalization.json' if meta['normalize'] else ''})"
          f"{note}")
    curve = os.path.join(out, "learning_curve.png")
    if os.path.exists(curve):
        print(f"learning curve {curve}")
    return 0 if t["reached_threshold"] else 1


def save_bundle(out: str, model, vecnorm, meta: dict) -> None:
    import torch
    os.makedirs(out, exist_ok=True)
    torch.save(model.policy.state_dict(), os.path.join(out, "policy.pt"))
    pk = model.policy_kwargs or {}
    meta["policy_kwargs"] = {"net_arch": list(pk.get("net_arch", [256, 256])), "n_critics": int(pk.get("n_critics", 2))}
    if vecnorm is not None:
        keys = list(vecnorm.norm_obs_keys or vecnorm.obs_rms.keys())
        stats = {"clip_obs": float(vecnorm.clip_obs), "epsilon": float(vecnorm.epsilon),
                 "keys": {k: {"mean": np.asarray(vecnorm.obs_rms[k].mean).tolist(),
                              "var": np.asarray(vecnorm.obs_rms[k].var).tolist(),
                              "count": float(vecnorm.obs_rms[k].count)} for k in keys}}
        with open(os.path.join(out, "normalization.json"), "w") as fh:
            json.dump(stats, fh)
    with open(os.path.join(out, "metadata.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    try:
        _plot_curve(meta, os.path.join(out, "learning_curve.png"))
    except ImportError:
        print("note: matplotlib is not installed, so no learning_curve.png (pip install matplotlib)",
              file=sys.stderr)


def _plot_curve(meta: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = meta["learning_curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["steps"] for c in curve], [c["success"] for c in curve], marker="o", ms=3)
    ax.axhline(meta["training"]["threshold"], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"eval success ({meta['training']['eval_episodes']} episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"SAC+HER on {meta['env_id']} ({meta['config']}{', sim2real' if meta.get('sim2real') else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- load and check ---------------------------------------------------------------------------
class Bundle:
    def __init__(self, path: str, meta: dict, policy, norm: dict | None):
        self.path, self.meta, self.policy, self.norm = path, meta, policy, norm

    def act(self, obs) -> np.ndarray:
        if self.norm is not None:  # as VecNormalize.normalize_obs, from the saved statistics
            c = self.norm["clip_obs"]
            obs = dict(obs)
            for key, (mean, std) in self.norm["arrays"].items():
                obs[key] = np.clip((np.asarray(obs[key]) - mean) / std, -c, c).astype(np.float32)
        action, _ = self.policy.predict(obs, deterministic=True)
        return action


def space_from_dict(d: dict):
    """The inverse of `space_to_dict` for what policies use: Dicts of Boxes with uniform bounds."""
    from gymnasium import spaces
    if d.get("type") == "Dict":
        return spaces.Dict({k: space_from_dict(v) for k, v in d["spaces"].items()})
    if d.get("type") == "Box":
        return spaces.Box(float(d["low"]), float(d["high"]), tuple(d["shape"]), dtype=np.dtype(d["dtype"]))
    raise ValueError(f"unsupported space {d}")


def load_bundle(path: str) -> Bundle:
    """Read a bundle; BundleError naming the file when it is missing or corrupt."""
    _require_sb3()
    if not os.path.isdir(path):
        raise BundleError(f"policy bundle {path!r} does not exist (or is not a directory); "
                          "`robot-env train --out DIR` writes one")
    for name in FILES:
        if not os.path.isfile(os.path.join(path, name)):
            raise BundleError(f"policy bundle {path!r} has no {name}; it is incomplete")
    mpath = os.path.join(path, "metadata.json")
    try:
        with open(mpath) as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is corrupt: {exc}") from None
    missing = [k for k in ("env_id", "control", "control_period", "action_scale", "description_hash",
                           "observation_space", "action_space") if k not in meta]
    if missing:
        raise BundleError(f"{mpath} lacks {', '.join(missing)}")
    if meta.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(f"{mpath}: bundle version {meta.get('bundle_version')!r}, this robot-env reads "
                          f"{BUNDLE_VERSION}")
    import torch
    from stable_baselines3.sac.policies import MultiInputPolicy
    ppath = os.path.join(path, "policy.pt")
    try:
        pk = meta.get("policy_kwargs") or {}
        policy = MultiInputPolicy(space_from_dict(meta["observation_space"]), space_from_dict(meta["action_space"]),
                                  lr_schedule=lambda _: 0.0, net_arch=list(pk.get("net_arch", [256, 256])),
                                  n_critics=int(pk.get("n_critics", 2)))
        # weights_only: tensors and plain containers only, nothing that can run code
        policy.load_state_dict(torch.load(ppath, map_location="cpu", weights_only=True))
        policy.set_training_mode(False)
    except Exception as exc:  # zip/pickle-format errors, unexpected keys, shape mismatches, bad spaces...
        raise BundleError(f"{ppath} is corrupt or does not fit metadata.json: {type(exc).__name__}: "
                          f"{str(exc)[:300]}") from None
    norm = None
    if meta.get("normalize"):
        npath = os.path.join(path, "normalization.json")
        try:
            with open(npath) as fh:
                raw = json.load(fh)
            eps = float(raw["epsilon"])
            norm = {"clip_obs": float(raw["clip_obs"]),
                    "arrays": {k: (np.asarray(v["mean"], dtype=np.float64),
                                   np.sqrt(np.asarray(v["var"], dtype=np.float64) + eps))
                               for k, v in raw["keys"].items()}}
        except FileNotFoundError:
            raise BundleError(f"policy bundle {path!r} was trained with normalization but has no "
                              "normalization.json") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{npath} is corrupt: {type(exc).__name__}: {exc}") from None
    return Bundle(path, meta, policy, norm)


def check_bundle(meta: dict, env) -> None:
    """BundleError listing every difference between a bundle's metadata and this env + server."""
    have = env_metadata(env)
    problems = []
    labels = {"env_id": "env id", "control": "control mode", "control_period": "control period (s)",
              "action_scale": "action scale (m per step)", "description_hash": "robot description hash",
              "observation_space": "observation space", "action_space": "action space"}
    for key, label in labels.items():
        want, got = meta[key], have[key]
        if key == "control_period":
            same = abs(float(want) - float(got)) < 1e-9
        elif key in ("observation_space", "action_space") and meta.get("time_feature"):
            same = True  # checked below against the wrapped env
        else:
            same = want == got
        if not same:
            problems.append(f"{label}: policy {want}, robot {got}")
    if meta.get("time_feature"):
        from .sac_her import TimeFeature
        wrapped = TimeFeature(env)
        for key, space in (("observation_space", wrapped.observation_space), ("action_space", env.action_space)):
            if space_to_dict(space) != meta[key]:
                problems.append(f"{labels[key]}: policy {meta[key]}, robot {space_to_dict(space)}")
    if problems:
        u = env.unwrapped
        raise BundleError(f"the policy does not fit the {u.backend_kind} robot; nothing was moved:\n  "
                          + "\n  ".join(problems))


def run_policy(bundle: Bundle, env, episodes: int = 10, seed: int = 0, progress=None):
    """Run a checked bundle for `episodes`; return (successes, steps, seconds)."""
    successes, steps = [], 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, info = False, {}
        while not done:
            obs, _, terminated, truncated, info = env.step(bundle.act(obs))
            steps += 1
            done = terminated or truncated
        successes.append(float(info["is_success"]))
        if progress:
            progress(ep + 1, episodes, float(np.mean(successes)), steps / (time.perf_counter() - t0))
    return successes, steps, time.perf_counter() - t0


def open_checked(policy: str, config=None, overrides=None):
    """Load a bundle, open the env a config names, check one against the other; (bundle, env)."""
    bundle = load_bundle(policy)
    meta = bundle.meta
    from ..envs.registration import ENV_IDS
    if meta["env_id"] not in ENV_IDS:
        raise BundleError(f"policy {policy!r} was trained on {meta['env_id']!r}, which robot-env does not have "
                          f"(it has {', '.join(ENV_IDS)})")
    import gymnasium as gym

    import robot_env  # noqa: F401
    env = gym.make(meta["env_id"], config=config, overrides=overrides or None, control=meta["control"],
                   block_gripper=meta.get("block_gripper", True), reward_type=meta.get("reward_type", "sparse"))
    try:
        check_bundle(meta, env)
    except BaseException:
        env.close()
        raise
    if meta.get("time_feature"):
        from .sac_her import TimeFeature
        env = TimeFeature(env)
    return bundle, env


# -- CLI entry points -------------------------------------------------------------------------
def run_train_cli(args) -> int:
    from .. import config as config_mod
    cfg = config_mod.load(args.config)
    print(f"robot-env train: SAC+HER on {args.env}, config {cfg['source']} ({cfg['server']['backend']} backend), "
          f"up to {args.steps} steps, eval every {args.eval_every} steps over {args.eval_episodes} episodes, "
          f"stop at {args.threshold:.0%}{', sim2real randomization on' if args.sim2real else ''}", flush=True)
    meta = train(args.config, steps=args.steps, out=args.out, seed=args.seed, eval_every=args.eval_every,
                 eval_episodes=args.eval_episodes, sim2real=args.sim2real, normalize=args.normalize,
                 time_feature=args.time_feature, threshold=args.threshold, num_envs=args.num_envs,
                 env_id=args.env, demos=args.demos)
    return report_training(meta, args.out)


def run_run_cli(args) -> int:
    from ..apps.demo import _bar
    from ..config import serial_port_override
    overrides = serial_port_override(args.config, args.serial_port)
    bundle, env = open_checked(args.policy, args.config, overrides)
    try:
        u = env.unwrapped
        t = bundle.meta.get("training") or {}
        final = t.get("final_success")
        print(f"policy {args.policy} ({t.get('steps', '?')} training steps, eval success "
              f"{'?' if final is None else format(final, '.0%')}) on the {u.backend_kind} backend: "
              f"metadata matches the server's hello (description {u._session.info['description_hash'][:12]}…, "
              f"period {u.dt:g} s, spaces)", flush=True)
        successes, steps, secs = run_policy(bundle, env, args.episodes, args.seed, progress=_bar)
        lat = u.latency.summary()
    finally:
        env.close()
    rate = float(np.mean(successes))
    print(f"success rate   {rate:.1%} over {args.episodes} episodes ({steps} steps, {steps / secs:,.0f} steps/s)")
    for name in ("rtt", "bridge", "action_to_obs"):
        s = lat[name]
        print(f"latency {name:<14} p50 {s['p50_ms']:.3f} ms   p90 {s['p90_ms']:.3f} ms   p99 {s['p99_ms']:.3f} ms")
    return 0 if rate >= 0.9 else 1
