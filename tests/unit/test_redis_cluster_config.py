"""How ``redis_cluster_nodes`` shapes the online store: the Feast config Feast itself parses,
the node services ``up`` starts, the set-up hook's place, and bad values refused by name."""

from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError

from taxi_mlops import cli
from taxi_mlops.settings import Settings
from taxi_mlops.stack import redis_cluster, services

PASSWORD = "s3cret-Pw_1"


def _settings(tmp_path, **kw) -> Settings:
    return Settings(state_dir=tmp_path, redis_port=16000, redis_password=PASSWORD, **kw)


def _feast_config(settings: Settings, monkeypatch):
    """The platform's feature_store.yaml as Feast loads it, with these settings' variables."""
    from feast.repo_config import load_repo_config

    for key, value in settings.feast_env().items():
        monkeypatch.setenv(key, value)
    return load_repo_config(settings.feast_repo, settings.feast_repo / "feature_store.yaml").online_store


def test_default_is_the_single_redis_of_before(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    assert settings.redis_cluster_nodes == 0 and settings.redis_node_ports == [16000]
    assert settings.redis_connection_string == (
        f"127.0.0.1:16000,db=0,password={PASSWORD},socket_timeout=2,socket_connect_timeout=2")
    online = _feast_config(settings, monkeypatch)
    assert online.redis_type == "redis" and online.connection_string == settings.redis_connection_string
    [single] = redis_cluster.redis_services(settings)
    assert single.command == services.redis_service(settings).command  # the same process as before
    assert single.name == "redis" and str(tmp_path / "redis") in single.command
    assert "redis" in services.after_start(settings)


def test_a_cluster_lists_every_node_for_feast_s_cluster_client(tmp_path, monkeypatch):
    from feast.infra.online_stores.redis import RedisOnlineStore

    settings = _settings(tmp_path, redis_cluster_nodes=3)
    assert settings.redis_node_ports == [16000, 16001, 16002]
    online = _feast_config(settings, monkeypatch)
    assert online.redis_type == "redis_cluster"
    nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
    assert nodes == [{"host": "127.0.0.1", "port": str(p)} for p in (16000, 16001, 16002)]
    # No db: redis-py's RedisCluster refuses the argument.
    assert params == {"password": PASSWORD, "socket_timeout": 2, "socket_connect_timeout": 2}


def test_the_environment_turns_the_cluster_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_REDIS_CLUSTER_NODES", "5")
    settings = Settings(state_dir=tmp_path, redis_port=16000)
    assert settings.redis_node_ports == [16000 + i for i in range(5)]
    assert settings.as_env()["TAXI_REDIS_CLUSTER_NODES"] == "5"  # children get the same store


@pytest.mark.parametrize("nodes", [1, 2, -1, 17])
def test_a_cluster_of_fewer_than_three_masters_is_refused_by_name(tmp_path, nodes):
    with pytest.raises(ValidationError, match="redis_cluster_nodes"):
        _settings(tmp_path, redis_cluster_nodes=nodes)


def test_a_node_port_on_another_service_s_port_is_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"Redis node ports \[16001\]"):
        _settings(tmp_path, redis_cluster_nodes=3, mlflow_port=16001)


def test_each_node_is_its_own_service_with_its_own_data_and_one_password(tmp_path):
    settings = _settings(tmp_path, redis_cluster_nodes=3)
    nodes = redis_cluster.redis_services(settings)
    assert [n.name for n in nodes] == ["redis", "redis-1", "redis-2"]
    assert all(redis_cluster.is_redis_node(n.name) for n in nodes) and not redis_cluster.is_redis_node("redis-x")
    dirs = set()
    for i, node in enumerate(nodes):
        args = node.command
        assert args[args.index("--port") + 1] == str(16000 + i)
        assert args[args.index("--bind") + 1] == "127.0.0.1"
        assert PASSWORD not in " ".join(args)  # never on a command line
        data = redis_cluster.node_data_dir(settings, i)
        assert args[args.index("--dir") + 1] == str(data) and data != tmp_path / "redis"
        dirs.add(data)
        node.prepare()
        config = data / "redis.conf"
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
        lines = config.read_text().splitlines()
        assert {f"requirepass {PASSWORD}", f"masterauth {PASSWORD}", "cluster-enabled yes",
                "cluster-config-file nodes.conf"} <= set(lines)
    assert len(dirs) == 3


def test_the_cluster_is_set_up_after_its_last_node(tmp_path):
    settings = _settings(tmp_path, redis_cluster_nodes=3)
    hooks = services.after_start(settings)
    assert "redis-2" in hooks and "redis" not in hooks
    names = [s.name for s in services.all_services(settings)]
    assert names[:3] == ["redis", "redis-1", "redis-2"]


def test_up_takes_the_node_count_and_refuses_a_bad_one(capsys):
    assert cli.build_parser().parse_args(["up", "--redis-cluster", "3"]).redis_cluster == 3
    assert cli.main(["up", "--redis-cluster", "2"]) == 1  # before anything starts
    assert "redis_cluster_nodes" in capsys.readouterr().err
