"""Redis for the Feast online store: one server, or a Redis Cluster of N masters
(``Settings.redis_cluster_nodes``).

A cluster's nodes are ordinary stack services ("redis", "redis-1", ...: their own log, pid
file, spec for the keeper), each with ``cluster-enabled``, its own data folder and
``nodes.conf``, and the one password (``requirepass`` and ``masterauth``, in a config file of
mode 0600). Once every node answers, ``ensure_cluster`` joins them with Redis's own tool,
``redis-cli --cluster create`` (slots split evenly, no replicas), unless the cluster already
holds every slot: a node restarted by the keeper or a later ``up`` rejoins from its
``nodes.conf``. Everything else reaches the cluster through Feast (``redis_type:
redis_cluster``) or, for checks, redis-py's ``RedisCluster`` (``cluster_client``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import PROBE_TIMEOUT_S, Service, wait_for

SLOTS = 16384


class RedisClusterError(RuntimeError):
    """The cluster could not be set up; the message says what to do."""


def node_name(node: int) -> str:
    """Node 0 keeps the single server's name, so logs, status and the keeper look alike."""
    return "redis" if node == 0 else f"redis-{node}"


def is_redis_node(name: str) -> bool:
    return name == "redis" or (name.startswith("redis-") and name[len("redis-"):].isdigit())


def node_data_dir(settings: Settings, node: int) -> Path:
    """Apart from the single server's ``<state_dir>/redis``: a node must start empty to join."""
    return settings.state_dir / "redis-cluster" / f"node-{node}"


def node_client(settings: Settings, port: int, password: str | None = None):
    """A plain client of one process (a node answers PING and CLUSTER INFO itself). No
    retries: redis-py 7's default backoff makes a probe of a port nobody listens on last
    about 8 s; the callers poll instead (``wait_for``)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from taxi_mlops import security

    return redis.Redis(host=settings.host, port=port,
                       password=security.redis_password(settings) if password is None else password,
                       socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S,
                       retry=Retry(NoBackoff(), 0))


def cluster_client(settings: Settings, password: str | None = None):
    """redis-py's cluster client on every node (it follows the slot map and MOVED replies)."""
    from redis.cluster import ClusterNode, RedisCluster

    from taxi_mlops import security

    return RedisCluster(startup_nodes=[ClusterNode(settings.host, p) for p in settings.redis_node_ports],
                        password=security.redis_password(settings) if password is None else password,
                        socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)


def _durability(persistent: bool) -> list[str]:
    """Snapshots plus an append-only file synced every second (a kill -9 loses at most a
    second); benches that measure the stream turn it off."""
    return (["--save", "60", "1", "--appendonly", "yes", "--appendfsync", "everysec"] if persistent
            else ["--save", "", "--appendonly", "no"])


def _write_config(path: Path, lines: list[str]) -> None:
    """Mode 0600: the password never shows on a command line or in a log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


BUS_PORT_OFFSET = 10000  # Redis's fixed cluster-bus offset from a node's port


def port_offsets(nodes: int) -> list[int]:
    """Every port a cluster of ``nodes`` takes, relative to ``redis_port``: the nodes, then
    their buses (for ``process.free_port_block``)."""
    return [*range(nodes), *(BUS_PORT_OFFSET + i for i in range(nodes))]


def node_service(settings: Settings, node: int, persistent: bool = True) -> Service:
    """Cluster node ``node`` on ``redis_port + node``; its bus on that port + BUS_PORT_OFFSET."""
    from taxi_mlops import security

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = settings.redis_node_ports[node]
    data = node_data_dir(settings, node)
    config = data / "redis.conf"

    def prepare() -> None:
        password = security.redis_password(settings)
        _write_config(config, [f"requirepass {password}", f"masterauth {password}",
                               "cluster-enabled yes", "cluster-config-file nodes.conf",
                               "cluster-node-timeout 5000"])

    return Service(
        name=node_name(node),
        command=[binary, str(config), "--bind", settings.host, "--port", str(port),
                 "--dir", str(data), *_durability(persistent), "--protected-mode", "yes",
                 "--daemonize", "no"],
        healthy=lambda: bool(node_client(settings, port).ping()),
        url=f"redis://{settings.host}:{port}",
        prepare=prepare,
        details=lambda: _node_details(settings, port),
    )


def redis_services(settings: Settings, persistent: bool = True) -> list[Service]:
    """What ``up`` starts for the online store: the single server (exactly as before) or
    every cluster node, node 0 first."""
    if not settings.redis_cluster_nodes:
        from taxi_mlops.stack.services import redis_service

        return [redis_service(settings, persistent=persistent)]
    return [node_service(settings, i, persistent) for i in range(settings.redis_cluster_nodes)]


def _node_details(settings: Settings, port: int) -> dict:
    try:
        info = node_client(settings, port).cluster("INFO")
    except Exception:
        return {}
    return {"cluster_state": info.get("cluster_state"), "slots_assigned": info.get("cluster_slots_assigned"),
            "known_nodes": info.get("cluster_known_nodes")}


def _cluster_info(settings: Settings, port: int) -> dict:
    import redis

    try:
        return node_client(settings, port).cluster("INFO")
    except redis.ResponseError as exc:  # "This instance has cluster support disabled"
        raise RedisClusterError(
            f"Redis at {settings.host}:{port} runs without cluster mode ({exc}): it was started with "
            "TAXI_REDIS_CLUSTER_NODES=0; run `taxi-mlops down`, then `up` again") from exc
    except redis.RedisError as exc:
        raise RedisClusterError(f"Redis cluster node {settings.host}:{port} does not answer: {exc}; "
                                "check `taxi-mlops status` and its log") from exc


def check_single(settings: Settings) -> None:
    """The single-server path: refuse a server that is in fact a cluster node (left running by
    ``up --redis-cluster N``), whose MOVED replies Feast's plain client would not follow."""
    import redis

    try:
        enabled = node_client(settings, settings.redis_port).info("cluster").get("cluster_enabled")
    except redis.RedisError:
        return  # not answering is the supervisor's to report
    if enabled:
        raise RedisClusterError(
            f"Redis at {settings.host}:{settings.redis_port} is a Redis Cluster node; set "
            "TAXI_REDIS_CLUSTER_NODES to its node count (or `taxi-mlops down` first)")


def ensure_cluster(settings: Settings) -> str:
    """Join the running nodes into a cluster once; 'created' or 'exists'.

    Idempotent: a cluster whose every node holds the whole slot map is left alone (a later
    ``up`` or a node restarted by the keeper rejoins it from ``nodes.conf``). Fresh nodes are
    joined by ``redis-cli --cluster create``, the password in ``REDISCLI_AUTH`` (not argv).
    Anything in between (a half-made cluster, another node count) is refused with the fix.
    Then waits until every node reports ``cluster_state:ok``."""
    ports = settings.redis_node_ports
    infos = {port: _cluster_info(settings, port) for port in ports}
    assigned = {port: int(info.get("cluster_slots_assigned", 0)) for port, info in infos.items()}
    known = {port: int(info.get("cluster_known_nodes", 1)) for port, info in infos.items()}
    if all(assigned[p] == SLOTS and known[p] == len(ports) for p in ports):
        state = "exists"
    elif all(assigned[p] == 0 and known[p] == 1 for p in ports):
        _create(settings, ports)
        state = "created"
    else:
        raise RedisClusterError(
            f"the Redis nodes {ports} are partly joined (slots assigned {assigned}, nodes known {known}; "
            f"expected {len(ports)} nodes): repair with `redis-cli --cluster fix {settings.host}:{ports[0]}`, "
            f"or `taxi-mlops down` and delete {settings.state_dir / 'redis-cluster'} to start empty")
    if not wait_for(lambda: cluster_ok(settings), settings.startup_timeout_s, 0.2):
        raise RedisClusterError(f"the Redis cluster on {ports} is not 'ok' after "
                                f"{settings.startup_timeout_s:.0f}s; see `taxi-mlops logs redis`")
    return state


def cluster_ok(settings: Settings) -> bool:
    """Every node answers and reports ``cluster_state:ok`` (all slots served)."""
    try:
        return all(node_client(settings, p).cluster("INFO").get("cluster_state") == "ok"
                   for p in settings.redis_node_ports)
    except Exception:  # a node down or restarting: not ok yet
        return False


def _create(settings: Settings, ports: list[int]) -> None:
    from taxi_mlops import security

    binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    command = [binary, "--cluster", "create", *(f"{settings.host}:{p}" for p in ports),
               "--cluster-replicas", "0", "--cluster-yes"]
    env = {**os.environ, "REDISCLI_AUTH": security.redis_password(settings)}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=settings.startup_timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisClusterError(f"`{' '.join(command)}` failed: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        raise RedisClusterError(f"`{' '.join(command)}` exited with {done.returncode}:\n{tail}")


def set_up(settings: Settings) -> str:
    """The set-up hook after the last Redis process: the cluster made (or the single server
    checked); the caller then applies the Feast repo."""
    if settings.redis_cluster_nodes:
        return f"Redis Cluster {ensure_cluster(settings)} ({settings.redis_cluster_nodes} masters)"
    check_single(settings)
    return "single Redis"
