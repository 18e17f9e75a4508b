"""Scale-out on Ray: simulator servers as Ray actors on an emulated two-node cluster (`ray.cluster_utils.
Cluster`), reached over tcp on the node's address with CurveZMQ, and a short SAC + HER training on them."""
import json
import os
import time

import pytest
import zmq

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray starts anything
ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils", reason="this ray has no ray.cluster_utils")
pytest.importorskip("stable_baselines3", reason="the train extra is not installed")

from support import descendants, wait_for  # noqa: E402

from robot_env import config  # noqa: E402
from robot_env.apps import cli
from robot_env.bridge.client import RobotClient  # noqa: E402
from robot_env.bridge.security import ClientKeys, client_keys  # noqa: E402
from robot_env.errors import ConfigError, ServerTimeout  # noqa: E402
from robot_env.training.ray_servers import ServerPool, train_on_ray  # noqa: E402


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    """Two emulated Ray nodes of 2 CPUs each on this machine; afterwards no process of it may be left."""
    before = descendants(os.getpid())
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    info = {"cluster": c, "actor_pids": set()}
    yield info
    ray.shutdown()
    c.shutdown()
    assert wait_for(lambda: not descendants(os.getpid()) - before, timeout=15), \
        f"processes left after the Ray cluster shut down: {descendants(os.getpid()) - before}"
    assert not [p for p in info["actor_pids"] if alive(p)]


@pytest.fixture
def pool(cluster):
    """Three CurveZMQ servers (1 CPU each: they cannot all fit on one node; stopped after each test, so
    the cluster's 4 CPUs are free for the next)."""
    p = ServerPool(3, "sim").start()
    cluster["actor_pids"].update(s["pid"] for s in p.servers)
    yield p
    p.stop()


def node_ids():
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_servers_spread_over_nodes_and_answer_over_tcp_with_curve(pool):
    assert len(node_ids()) == 2
    nodes = {s["node_id"] for s in pool.servers}
    assert nodes <= node_ids() and len(nodes) == 2, pool.describe()  # SPREAD, and 2 CPUs per node
    assert len({s["pid"] for s in pool.servers}) == 3
    for s, cc in zip(pool.servers, pool.client_configs):
        host = ray.util.get_node_ip_address()
        assert s["endpoint"].startswith(f"tcp://{host}:") and s["secure"] and s["running"], s
        cfg = config.load(cc)
        assert cfg["client"]["endpoint"] == s["endpoint"] and os.path.isfile(cfg["client"]["client_secret_key"])
        with RobotClient(s["endpoint"], timeout=5.0, keys=client_keys(cfg)) as c:
            hello = c.hello()
            assert hello["backend"] == "kinematic" and hello["pid"] == s["pid"]
            assert c.step({"ee_delta": [0.01, 0.0, 0.0]})["mode"] == "ok"
    assert all(st["accepted"] >= 1 for st in pool.states())
    # the server secret keys left the trainer's disk once handed to the actors
    assert not any(p.name.endswith("key_secret") and p.name != "trainer.key_secret" for p in pool.keys.dir.iterdir())


def test_keys_are_enforced(pool):
    s, cfg = pool.servers[0], config.load(pool.client_configs[0])
    right = client_keys(cfg)
    for keys in (None, ClientKeys.ephemeral(right.server_public),   # no keys; a client key not allowed
                 ClientKeys(right.public, right.secret, zmq.curve_keypair()[0])):  # wrong server key
        with RobotClient(s["endpoint"], timeout=0.5, retries=0, keys=keys) as c:
            t0 = time.monotonic()
            with pytest.raises(ServerTimeout):
                c.hello()
            assert time.monotonic() - t0 < 1.5
    assert wait_for(lambda: pool.states()[0]["refused"] >= 3, timeout=5), pool.states()[0]
    with RobotClient(s["endpoint"], timeout=5.0, keys=right) as c:  # still serving the trainer
        assert c.state()["mode"] == "ok"


def test_short_sac_her_training_on_the_ray_servers(cluster, tmp_path, no_leftover_servers):
    """2 env workers + 1 evaluation server, ~1,000 steps, learning from step 200: the pipeline runs
    end to end and writes a bundle `robot-env run` accepts."""
    from robot_env.training.train import load_bundle
    out = str(tmp_path / "bundle")
    started = []

    def on_start(p):
        started.extend(p.servers)
        cluster["actor_pids"].update(s["pid"] for s in p.servers)

    meta = train_on_ray(2, "sim", steps=1000, out=out, seed=0, eval_every=500, eval_episodes=5,
                        learning_starts=200, batch_size=128, on_start=on_start, log=False)
    t = meta["training"]
    assert t["steps"] == 1000 and meta["num_envs"] == 2 and [c["steps"] for c in meta["learning_curve"]] == [500, 1000]
    assert meta["ray"]["eval_server"] == started[-1]["endpoint"] and len(meta["ray"]["servers"]) == 3
    assert {s["node_id"] for s in started} <= node_ids()
    b = load_bundle(out)
    assert b.meta["algorithm"] == "SAC+HER (stable-baselines3)" and os.path.isfile(os.path.join(out, "normalization.json"))
    with open(os.path.join(out, "metadata.json")) as fh:
        assert json.load(fh)["training"]["hyperparams"]["learning_starts"] == 200
    # the servers are stopped: their actors are gone
    assert wait_for(lambda: not any(alive(s["pid"]) for s in started), timeout=10)
    # and the bundle runs on a local simulator
    assert cli.main(["run", "--policy", out, "--episodes", "2"]) in (0, 1)


def test_mujoco_servers_host_the_tasks_scene_on_ray(cluster, tmp_path, no_leftover_servers):
    """Slide on Ray: the actors host mujoco servers with the task's own scene (slide_table), and the
    object tasks' hyper-parameters apply."""
    out = str(tmp_path / "slide")
    started = []

    def on_start(p):
        started.extend(p.servers)
        cluster["actor_pids"].update(s["pid"] for s in p.servers)
        assert {s["backend"] for s in p.servers} == {"mujoco"}

    meta = train_on_ray(1, None, steps=300, out=out, seed=0, eval_every=300, eval_episodes=1, learning_starts=200,
                        on_start=on_start, log=False, env_id="robot_env/FetchSlide-v0", insecure=True)
    assert meta["env_id"] == "robot_env/FetchSlide-v0" and meta["config"] == "mujoco"
    assert meta["training"]["hyperparams"]["tau"] == 0.05  # the object tasks' settings
    assert wait_for(lambda: not any(alive(s["pid"]) for s in started), timeout=10)


def test_cli_insecure_flag_on_the_cluster(cluster, tmp_path, capsys):
    """`robot-env train --ray ADDRESS --insecure`: servers without keys, the warning in the output."""
    out = str(tmp_path / "cli")
    code = cli.main(["train", "--ray", "auto", "--ray-servers", "1", "--insecure", "--steps", "100",
                     "--eval-every", "100", "--eval-episodes", "1", "--out", out])
    text = capsys.readouterr().out
    assert code == 1 and "did not reach" in text, text  # 100 steps, no learning yet: the pipeline ran
    assert "INSECURE" in text and os.path.isfile(os.path.join(out, "policy.pt"))
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["ray"]["insecure"] is True
    cluster["actor_pids"].update(s["pid"] for s in meta["ray"]["servers"])
    assert cli.main(["train", "--insecure"]) == 2  # only with --ray


def test_an_insecure_server_answers_any_client(cluster):
    with ServerPool(1, "sim", insecure=True) as p:
        cluster["actor_pids"].add(p.servers[0]["pid"])
        assert not p.servers[0]["secure"] and p.keys is None
        assert set(p.client_configs[0]["client"]) == {"endpoint", "timeout", "retries"}
        with RobotClient(p.servers[0]["endpoint"], timeout=5.0) as c:
            assert c.hello()["backend"] == "kinematic"


def test_hardware_configs_are_refused():
    with pytest.raises(ConfigError, match="Ray servers host one simulated robot each.*robot-env serve"):
        ServerPool(1, {"server": {"backend": "dynamixel"}})


def test_stop_closes_every_server(pool, cluster):
    keys = {i: client_keys(config.load(cc)) for i, cc in enumerate(pool.client_configs)}
    servers, key_dir = list(pool.servers), pool.keys.dir
    final = pool.stop()
    assert [f["closed"] for f in final] == [True] * 3 and not any(f["running"] for f in final), final
    assert pool.keys is None and not key_dir.exists()  # the trainer's keys go with the pool
    assert wait_for(lambda: not any(alive(s["pid"]) for s in servers), timeout=10)
    with RobotClient(servers[0]["endpoint"], timeout=0.5, retries=0, keys=keys[0]) as c:
        with pytest.raises(ServerTimeout):
            c.hello()
