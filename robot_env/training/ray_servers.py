"""Scale-out on Ray: simulator servers as Ray actors across a cluster, SAC + HER env workers over tcp.

The learner is one process (Stable-Baselines3 SAC with `HerReplayBuffer`: the task is goal-conditioned
with a sparse reward, and HER is what makes it learn in a few thousand steps; RLlib has no HER). Its
VecEnv's env workers are ordinary `robot_env/FetchReach-v0` clients, each connected over tcp to its
own simulator server. The servers are `RobotServer`s hosted by Ray actors (`SimulatorServer`), placed
across the cluster's nodes (scheduling strategy "SPREAD") and bound on their node's IP address.

Security. A server on a non-local address needs CurveZMQ keys or an explicit insecure flag
(`endpoints.check_bind`). `ServerPool` makes fresh keys for each run on the trainer: one key pair per
server and one for the trainer's clients. The actors get their server's secret key and the trainer's
public key as file *contents* (nodes share no disk); each writes them to a private temporary directory
(mode 0700; `security.write_key_file`, as for any key file: secret 0600, public 0644, never through
a link), builds its server, which reads them, and deletes them at once. The trainer's client configs
name its own key files (in a temporary directory removed by `stop()`).
`insecure=True` skips all that for a private cluster network (`[server] insecure = true`: the servers
print a warning). The secret keys travel inside Ray's own messages, and Ray keeps an actor's
constructor arguments in its control store (GCS) while the actor lives: enable Ray's TLS and token
authentication where others could read the cluster's traffic or reach its head node. The keys are
fresh per run, so they are worth nothing once the pool stops.

Threads. A ZeroMQ socket must be used by one thread only: the actor builds its server (binding the
sockets) inside the thread that then serves it, and `stop()` only sets `server.running = False` and
joins that thread; `serve_forever` closes the sockets on its way out, in the serving thread. The loop
also exits when its parent (the node's raylet) dies.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import ConfigError, RobotEnvError

RAY_HINT = 'install Ray on every node: `pip install -e ".[ray]"` (or `pip install "ray>=2.9"`)'


def _require_ray():
    try:
        import ray
    except ImportError:
        raise RobotEnvError(f"ray is not installed: {RAY_HINT}") from None
    return ray


# -- the actor --------------------------------------------------------------------------------
class SimulatorServer:
    """One `RobotServer` in a Ray actor, bound on tcp://<node ip>:<free port>, served by a thread.

    `config` is a config dict (as `config.load` returns). With `server_key` (the text of the server's
    ``.key_secret`` file) and `client_key` (the text of the trainer's ``.key`` file) the server
    requires CurveZMQ; with `insecure` it listens without.
    """

    def __init__(self, config: dict, *, server_key: str | None = None, client_key: str | None = None,
                 insecure: bool = False, host: str | None = None, port: int = 0, ready_timeout: float = 60.0):
        if (server_key is None) != (client_key is None):
            raise ConfigError("give both the server's secret key and the allowed client key, or neither")
        if server_key is None and not insecure:
            raise ConfigError("a Ray simulator server listens on its node's address: give it CurveZMQ keys, "
                              "or insecure=True for a private cluster network")
        log = logging.getLogger("robot_env")
        if not log.handlers:  # the server's accepted / refused lines go to this worker's log
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        import ray
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = host or ray.util.get_node_ip_address()
        self._args = (config, server_key, client_key, insecure, port)
        self.server = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="robot-env-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(ready_timeout):
            raise RobotEnvError(f"the simulator server on {self.node_ip} did not bind within {ready_timeout:g} s")
        if self.error is not None:
            raise self.error

    def _serve(self) -> None:
        from .. import config as config_mod
        from ..bridge.server import build_server
        cfg, server_key, client_key, insecure, port = self._args
        self._args = None  # the secret key text is not kept
        try:
            overrides = {"server": {"insecure": bool(insecure), "endpoint": "", "stream_endpoint": ""}}
            keydir = None
            try:
                if server_key is not None:
                    from ..bridge.security import write_key_file
                    keydir = tempfile.mkdtemp(prefix="robot-env-keys-")  # mode 0700
                    # as `robot-env keys` writes them: explicit modes, never through a link
                    secret = write_key_file(Path(keydir, "server.key_secret"), server_key, secret=True)
                    trainer = write_key_file(Path(keydir, "trainer.key"), client_key, secret=False)
                    overrides["server.security"] = {"server_secret_key": str(secret),
                                                    "allowed_clients": [str(trainer)]}
                cfg = config_mod.load(cfg, overrides)
                host = self.node_ip if ":" not in self.node_ip else f"[{self.node_ip}]"
                self.server = build_server(cfg, endpoint=f"tcp://{host}:{port or '*'}",
                                           stream_endpoint=f"tcp://{host}:*")
            finally:  # the server has read its keys: none stay on this node's disk
                if keydir is not None:
                    shutil.rmtree(keydir, ignore_errors=True)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.server.serve_forever()  # closes the sockets (in this thread) when it returns
        except BaseException as exc:
            self.error = exc

    def state(self) -> dict:
        srv = self.server
        guard = srv.guard
        return {"endpoint": srv.endpoint, "stream_endpoint": srv.stream_endpoint, "node_id": self.node_id,
                "node_ip": self.node_ip, "hostname": socket.gethostname(), "pid": os.getpid(),
                "backend": srv.backend.kind, "secure": guard is not None,
                "running": self._thread.is_alive(), "requests": srv.stats["requests"],
                "accepted": guard.accepted if guard else None, "refused": guard.refused if guard else None,
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}

    def stop(self, timeout: float = 5.0) -> dict:
        """Stop serving and close the sockets (the serving thread closes them); the final state."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            self.server.running = False  # again each turn: the loop sets it True when it starts
            self._thread.join(0.05)
        st = self.state()
        st["closed"] = self.server.router.closed
        return st


_REMOTE = None


def _remote_class():
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = _require_ray().remote(SimulatorServer)
    return _REMOTE


# -- keys -------------------------------------------------------------------------------------
class PoolKeys:
    """Fresh CurveZMQ keys for a pool, made on the trainer in a private temporary directory: a pair per
    server (its secret handed to its actor as text, then deleted here; its public key kept as a file for
    the clients) and one pair for the trainer's clients."""

    def __init__(self, n_servers: int, key_dir: str | None = None):
        from ..bridge.security import create_keypair
        self.dir = Path(key_dir or tempfile.mkdtemp(prefix="robot-env-ray-keys-"))
        self.client_public, self.client_secret = create_keypair(self.dir, "trainer")
        self.client_public_text = self.client_public.read_text(encoding="utf-8")
        self.server_public: list[Path] = []
        self.server_secret_text: list[str] = []
        for i in range(n_servers):
            public, secret = create_keypair(self.dir, f"server-{i}")
            self.server_secret_text.append(secret.read_text(encoding="utf-8"))
            secret.unlink()
            self.server_public.append(public)

    def client_config(self, i: int, endpoint: str, **client) -> dict:
        return {"client": dict(client, endpoint=endpoint, server_public_key=str(self.server_public[i]),
                               client_secret_key=str(self.client_secret))}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the pool ---------------------------------------------------------------------------------
class ServerPool:
    """`n` simulator servers as Ray actors spread over the cluster; `client_configs` connect to them.

    Call after `ray.init(...)`. A context manager: `stop()` closes every server and ends its actor.
    `config`: the servers' config (name, path or dict; a simulator backend). `num_cpus`: Ray CPUs each
    server reserves (the simulator is single-threaded: one core).
    """

    def __init__(self, n: int, config=None, *, insecure: bool = False, num_cpus: float = 1,
                 strategy="SPREAD", timeout: float | None = None, start_timeout: float = 120.0,
                 overrides: dict | None = None):
        from .. import config as config_mod
        if n < 1:
            raise ValueError("a pool needs at least one server")
        self.cfg = config_mod.load(config, overrides)
        backend = self.cfg["server"]["backend"]
        if backend not in ("kinematic", "mujoco"):
            raise ConfigError(f"{self.cfg['source']}: Ray servers host one simulated robot each (the kinematic or "
                              f"mujoco backend), not {backend!r}" + (": the hardware server runs next to the robot "
                              "(`robot-env serve`)" if backend == "dynamixel" else ""))
        self.n, self.insecure, self.num_cpus, self.strategy = n, insecure, num_cpus, strategy
        self.start_timeout = start_timeout
        cc = self.cfg["client"]
        self.client_settings = {"timeout": timeout or cc["timeout"], "retries": cc["retries"]}
        self.keys: PoolKeys | None = None
        self.actors: list = []
        self.servers: list[dict] = []
        self.client_configs: list[dict] = []
        self.stopped: list[dict] = []

    def start(self) -> "ServerPool":
        ray = _require_ray()
        if not ray.is_initialized():
            raise RobotEnvError("connect to a Ray cluster first: ray.init(address='auto') (or ray.init() for a "
                                "local one)")
        need, total = self.n * self.num_cpus, ray.cluster_resources().get("CPU", 0.0)
        if need > total:  # an autoscaling cluster may still grow: warn, then wait up to start_timeout
            print(f"robot-env: warning: {self.n} simulator server(s) reserve {need:g} CPUs (num_cpus="
                  f"{self.num_cpus:g} each) but the Ray cluster has {total:g}: add nodes, or reserve less per "
                  f"server (--ray-cpus); waiting up to {self.start_timeout:g} s", file=sys.stderr, flush=True)
        try:
            self.keys = None if self.insecure else PoolKeys(self.n)
            cls = _remote_class().options(num_cpus=self.num_cpus, scheduling_strategy=self.strategy)
            cfg = dict(self.cfg)
            for i in range(self.n):
                kw = {"insecure": True} if self.keys is None else {
                    "server_key": self.keys.server_secret_text[i], "client_key": self.keys.client_public_text}
                self.actors.append(cls.remote(cfg, **kw))
            try:
                self.servers = ray.get([a.state.remote() for a in self.actors], timeout=self.start_timeout)
            except ray.exceptions.GetTimeoutError:
                raise RobotEnvError(f"the Ray cluster did not start {self.n} simulator server(s) within "
                                    f"{self.start_timeout:g} s: too few free CPUs? (each reserves "
                                    f"num_cpus={self.num_cpus:g}, --ray-cpus; `ray status` shows the cluster)") from None
            except ray.exceptions.RayActorError as exc:
                raise RobotEnvError(f"a simulator server actor failed to start: {exc}") from None
            if self.keys is not None:  # the secrets are with the actors now
                self.keys.server_secret_text = []
            self.client_configs = [
                self.keys.client_config(i, s["endpoint"], **self.client_settings) if self.keys is not None
                else {"client": dict(self.client_settings, endpoint=s["endpoint"])}
                for i, s in enumerate(self.servers)]
        except BaseException:
            self.stop()
            raise
        return self

    def states(self) -> list[dict]:
        ray = _require_ray()
        return ray.get([a.state.remote() for a in self.actors], timeout=30)

    def stop(self, timeout: float = 10.0) -> list[dict]:
        """Stop every server (its thread closes its sockets), then end the actors; their final states."""
        final: list = []
        if self.actors:
            ray = _require_ray()
            refs = [a.stop.remote() for a in self.actors]
            for ref in refs:
                try:
                    final.append(ray.get(ref, timeout=timeout))
                except Exception as exc:  # an actor that died or hangs: ray.kill below ends it anyway
                    final.append({"error": f"{type(exc).__name__}: {exc}"})
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:
                    pass
            self.actors = []
        if self.keys is not None:
            self.keys.remove()
            self.keys = None
        self.stopped = final
        return final

    def __enter__(self):
        return self.start() if not self.actors else self

    def __exit__(self, *exc):
        self.stop()

    def describe(self) -> str:
        lines = []
        for s in self.servers:
            lines.append(f"  {s['endpoint']}  node {s['node_id'][:12]} ({s['node_ip']}, {s['hostname']}) pid "
                         f"{s['pid']}  {'CurveZMQ' if s['secure'] else 'INSECURE'}")
        return "\n".join(lines)


# -- training ---------------------------------------------------------------------------------
def train_on_servers(train_configs: list, eval_config, steps: int = 30_000, out: str = "policy", seed: int = 0,
                     eval_every: int = 1000, eval_episodes: int = 20, normalize: bool | None = None,
                     time_feature: bool | None = None, threshold: float = 0.95, vec_env: str = "dummy",
                     log=None, extra_meta: dict | None = None, env_id: str | None = None, **hyper) -> dict:
    """SAC + HER (`sac_her.train_loop`, as `robot-env train`) with one env worker per running server in
    `train_configs` and evaluation on `eval_config`'s server; writes a policy bundle to `out` and returns
    its metadata. `vec_env`: "dummy" steps the workers in turn in this process, "subproc" in a process
    each. One gradient step per collected step unless `gradient_steps` says otherwise; other keywords
    override `sac_her.HYPERPARAMS`. `log`: None for the progress line, False for silence, or a callable."""
    from . import train as tr
    tr._require_sb3()
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from ..envs.registration import entry
    from .sac_her import OBJECT_HYPERPARAMS
    env_id = env_id or tr.ENV_ID
    if entry(env_id).task.has_object:  # the object tasks' settings, under what the caller chose
        hyper = {**OBJECT_HYPERPARAMS, **hyper}

    normalize = tr.DEFAULT_NORMALIZE if normalize is None else normalize
    time_feature = tr.DEFAULT_TIME_FEATURE if time_feature is None else time_feature
    log = tr._progress if log is None else (log or None)
    if vec_env not in ("dummy", "subproc"):
        raise ValueError(f"vec_env must be 'dummy' or 'subproc', got {vec_env!r}")

    def make_venv():
        fns = [lambda c=c: tr.make_env(c, time_feature=time_feature, env_id=env_id) for c in train_configs]
        return SubprocVecEnv(fns) if vec_env == "subproc" else DummyVecEnv(fns)

    return tr.train_bundle(lambda: tr.make_env(eval_config, time_feature=time_feature, env_id=env_id), make_venv,
                           out, steps,
                           seed=seed, eval_every=eval_every, eval_episodes=eval_episodes, threshold=threshold,
                           normalize=normalize, time_feature=time_feature, log=log,
                           meta_extra={"num_envs": len(train_configs), "vec_env": vec_env, **(extra_meta or {})},
                           **hyper)


def train_on_ray(n_envs: int = 2, config=None, steps: int = 30_000, out: str = "policy", *, insecure: bool = False,
                 num_cpus: float = 1, sim2real: bool = False, log=None, on_start=None, env_id: str | None = None,
                 **kwargs) -> dict:
    """Start `n_envs` + 1 simulator servers on the connected Ray cluster (one per env worker, one for
    evaluation), train SAC + HER on env `env_id` (default FetchReach) on them (`train_on_servers`), stop
    them. `on_start(pool)` is called once they run. Returns the bundle's metadata."""
    from .. import config as config_mod
    from ..backends.registry import settings_of
    from ..envs.registration import entry
    from .train import ENV_ID, sim2real_overrides
    env_id = env_id or ENV_ID
    config = config if config is not None else entry(env_id).config
    overrides = sim2real_overrides(config, sim2real)
    scene = entry(env_id).task.needs.scene
    backend = config_mod.load(config)["server"]["backend"]
    if scene is not None and "scene" in settings_of(backend):  # the servers host the task's scene
        overrides.setdefault(f"server.{backend}", {})["scene"] = scene
    with ServerPool(n_envs + 1, config, insecure=insecure, num_cpus=num_cpus, overrides=overrides) as pool:
        if on_start is not None:
            on_start(pool)
        extra = {"config": str(config or "sim"), "sim2real": overrides.get("server.kinematic"),
                 "ray": {"servers": [{k: s[k] for k in ("endpoint", "node_id", "node_ip", "hostname", "pid")}
                                     for s in pool.servers],
                         "eval_server": pool.servers[-1]["endpoint"], "insecure": insecure}}
        return train_on_servers(pool.client_configs[:-1], pool.client_configs[-1], steps=steps, out=out,
                                log=log, extra_meta=extra, env_id=env_id, **kwargs)


# -- CLI --------------------------------------------------------------------------------------
def run_ray_train_cli(args) -> int:
    """`robot-env train --ray ADDRESS [--ray-servers K] [--insecure]`."""
    ray = _require_ray()
    from .train import ENV_ID
    n = 2 if args.ray_servers is None else args.ray_servers
    if n < 1:
        raise ConfigError("--ray-servers must be at least 1")
    if getattr(args, "num_envs", 1) != 1:
        raise ConfigError("--num-envs (robots behind one batched local server) and --ray (a server per env "
                          "worker) do not combine; use --ray-servers")
    owned = not ray.is_initialized()
    if owned:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if args.ray == "local":
            ray.init(include_dashboard=False)
        else:
            ray.init(address=args.ray)
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        env_id = getattr(args, "env", None) or ENV_ID
        print(f"robot-env train on Ray: SAC+HER on {env_id}, {n} env worker(s) + 1 evaluation "
              f"server on a cluster of {len(nodes)} node(s), up to {args.steps} steps, "
              f"{'INSECURE (no CurveZMQ)' if args.insecure else 'CurveZMQ (fresh keys for this run)'}",
              flush=True)

        def started(pool):
            print(f"simulator servers ({pool.n}, the last one evaluates):\n{pool.describe()}", flush=True)

        meta = train_on_ray(n, args.config, steps=args.steps, out=args.out, insecure=args.insecure,
                            num_cpus=1.0 if args.ray_cpus is None else args.ray_cpus,
                            sim2real=args.sim2real, on_start=started, env_id=env_id, seed=args.seed,
                            eval_every=args.eval_every,
                            eval_episodes=args.eval_episodes, normalize=args.normalize,
                            time_feature=args.time_feature, threshold=args.threshold, vec_env=args.vec_env or "dummy")
    finally:
        if owned:
            ray.shutdown()
    from .train import report_training
    return report_training(meta, args.out, note="; servers stopped")
