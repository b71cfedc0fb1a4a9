"""The Feast online store on a 3-master Redis Cluster (``redis_cluster_nodes=3``) started by
the stack's own code: the set-up hook joins the nodes, Feast (``redis_type: redis_cluster``)
materializes the offline tables and reads back the same values, the keys sit on the masters
their hash slots name, a wrong password is refused, and the cluster survives a restart of
every node (set-up does nothing the second time) and a node killed and healed by the keeper.

No session stack: just the three Redis nodes, on free ports, with their own state dir.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import redis

from taxi_mlops import paths
from taxi_mlops.features import schema, store
from taxi_mlops.settings import Settings
from taxi_mlops.stack import redis_cluster, services
from taxi_mlops.stack.keeper import Keeper
from taxi_mlops.stack.process import Supervisor, free_port_block, wait_for

pytestmark = pytest.mark.slow

NODES = 3
CSV = paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv"
VIEWS = {schema.AREA_VIEW: (schema.AREA_KEY, schema.AREA_FEATURES),
         schema.COMPANY_VIEW: (schema.COMPANY_KEY, schema.COMPANY_FEATURES)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The nodes started as `up` starts them, then `up`'s hook after the last one (cluster
    joined, Feast repo applied), then the offline tables materialized into the cluster."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("TAXI_FEAST_")}
    settings = Settings(state_dir=tmp_path_factory.mktemp("redis-cluster"),
                        redis_port=free_port_block(redis_cluster.port_offsets(NODES)), redis_cluster_nodes=NODES,
                        startup_timeout_s=60, restart_backoff_s=0.2)
    sup = Supervisor(settings)
    nodes = redis_cluster.redis_services(settings)
    try:
        assert [sup.start(n) for n in nodes] == ["started"] * NODES
        assert [n.name for n in nodes] == ["redis", "redis-1", "redis-2"]
        services.after_start(settings)[nodes[-1].name]()
        store.write_offline_tables(settings, CSV)
        store.materialize(settings)
        yield settings, sup
    finally:
        for node in reversed(nodes):
            sup.stop(node.name)
        for key in [k for k in os.environ if k.startswith("TAXI_FEAST_")]:
            del os.environ[key]
        os.environ.update(saved)  # later test files read their own stack's store


def _latest_rows(settings: Settings, view: str) -> pd.DataFrame:
    """What materialization must have loaded: each entity's newest row (then newest created)."""
    key, _ = VIEWS[view]
    frame = pd.read_parquet(settings.feast_data_dir / f"{view}.parquet")
    return frame.sort_values(["event_timestamp", "created"]).groupby(key).tail(1).set_index(key)


def _online(settings: Settings, view: str, ids: list) -> pd.DataFrame:
    key, features = VIEWS[view]
    fs = store.feature_store(settings)
    got = fs.get_online_features(features=[f"{view}:{f}" for f in features],
                                 entity_rows=[{key: i} for i in ids]).to_dict()
    return pd.DataFrame(got).set_index(key)


def _assert_store_matches_offline(settings: Settings) -> int:
    """Every entity of both views read through Feast equals its newest offline row."""
    checked = 0
    for view, (key, features) in VIEWS.items():
        expected = _latest_rows(settings, view)
        ids = [int(i) if key == schema.AREA_KEY else str(i) for i in expected.index]
        got = _online(settings, view, ids)
        assert got[features].notna().all().all(), f"{view}: entities missing from the online store"
        for feature in features:
            assert got.loc[ids, feature].to_numpy() == pytest.approx(
                expected.loc[ids, feature].to_numpy(), rel=1e-6), feature
        checked += len(ids)
    return checked


def _slot_owners(client: redis.Redis) -> dict[int, int]:
    """Slot -> port of the master that serves it, from CLUSTER SLOTS."""
    owners = {}
    for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
        owners.update({slot: int(master[1]) for slot in range(start, end + 1)})
    return owners


def test_every_node_is_a_master_of_one_cluster_holding_every_slot(cluster):
    settings, _ = cluster
    ids = set()
    for port in settings.redis_node_ports:
        node = redis_cluster.node_client(settings, port)
        info = node.cluster("INFO")
        assert (info["cluster_state"], int(info["cluster_slots_assigned"]), int(info["cluster_known_nodes"])) \
            == ("ok", redis_cluster.SLOTS, NODES)
        ids.add(node.execute_command("CLUSTER MYID"))
    owners = _slot_owners(redis_cluster.node_client(settings, settings.redis_port))
    assert len(owners) == redis_cluster.SLOTS and set(owners.values()) == set(settings.redis_node_ports)
    assert len(ids) == NODES  # three distinct nodes, each with its own nodes.conf
    confs = [redis_cluster.node_data_dir(settings, i) / "nodes.conf" for i in range(NODES)]
    assert all(c.exists() for c in confs) and len({c.read_text() for c in confs}) == NODES


def test_feast_reads_the_cluster_and_returns_what_was_materialized(cluster):
    settings, _ = cluster
    online_store = store.feature_store(settings).config.online_store
    assert online_store.redis_type == "redis_cluster"
    assert online_store.connection_string.count(f"{settings.host}:") == NODES
    assert _assert_store_matches_offline(settings) > 100


def test_feature_keys_sit_on_the_master_their_slot_names_spread_over_masters(cluster):
    settings, _ = cluster
    owners = _slot_owners(redis_cluster.node_client(settings, settings.redis_port))
    client = redis_cluster.cluster_client(settings)  # redis-py's view of the slot map
    per_node = {}
    for port in settings.redis_node_ports:
        node = redis_cluster.node_client(settings, port)
        keys = list(node.scan_iter(count=1000))
        for key in keys:
            assert owners[node.execute_command("CLUSTER KEYSLOT", key)] == port
            assert client.get_node_from_key(key).port == port
        per_node[port] = len(keys)
    entities = sum(len(_latest_rows(settings, view)) for view in VIEWS)
    assert sum(per_node.values()) == entities  # one hash per entity, each on exactly one master
    assert sum(1 for n in per_node.values() if n) >= 2, per_node


def test_a_wrong_or_missing_password_is_refused(cluster):
    settings, _ = cluster
    for port in settings.redis_node_ports:
        with pytest.raises(redis.AuthenticationError):
            redis_cluster.node_client(settings, port, password="not-the-password").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=settings.host, port=port, socket_timeout=2).get("anything")
    with pytest.raises(redis.exceptions.RedisClusterException, match="invalid username-password pair"):
        redis_cluster.cluster_client(settings, password="not-the-password")
    wrong = settings.model_copy(update={"redis_password": "not-the-password"})
    with pytest.raises(redis.exceptions.RedisClusterException, match="invalid username-password pair"):
        _online(wrong, schema.AREA_VIEW, [8])  # Feast's own RedisCluster client, refused
    assert _online(settings, schema.AREA_VIEW, [8]).loc[8, "area_trip_count"] > 0


def test_single_redis_settings_refuse_a_cluster_node(cluster):
    settings, _ = cluster
    single = settings.model_copy(update={"redis_cluster_nodes": 0})
    with pytest.raises(redis_cluster.RedisClusterError, match="TAXI_REDIS_CLUSTER_NODES"):
        redis_cluster.set_up(single)


def test_a_restart_of_every_node_keeps_the_cluster_and_set_up_does_nothing(cluster):
    settings, sup = cluster
    ids = {p: redis_cluster.node_client(settings, p).execute_command("CLUSTER MYID")
           for p in settings.redis_node_ports}
    nodes = redis_cluster.redis_services(settings)
    for node in reversed(nodes):
        assert sup.stop(node.name)
    assert [sup.start(n) for n in nodes] == ["started"] * NODES  # what a second `up` does
    assert redis_cluster.ensure_cluster(settings) == "exists"
    assert {p: redis_cluster.node_client(settings, p).execute_command("CLUSTER MYID")
            for p in settings.redis_node_ports} == ids
    _assert_store_matches_offline(settings)  # the append-only files brought the rows back


def test_the_keeper_restarts_a_killed_node_and_the_cluster_heals(cluster):
    settings, sup = cluster
    victim, port = "redis-1", settings.redis_node_ports[1]
    old_pid = sup.pid(victim)
    sup.kill(victim)
    keeper = Keeper(settings)
    assert wait_for(lambda: keeper.tick() or sup.pid(victim) not in (None, old_pid), 60)
    assert wait_for(lambda: redis_cluster.cluster_ok(settings), 60)
    assert redis_cluster.ensure_cluster(settings) == "exists"
    assert redis_cluster.node_client(settings, port).dbsize() > 0
    _assert_store_matches_offline(settings)


def test_the_default_single_redis_goes_through_the_same_hook(tmp_path):
    """``redis_cluster_nodes=0``: one plain Redis named "redis", the hook after it accepts it
    and applies the repo, and Feast reads it as ``redis_type: redis``."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("TAXI_FEAST_")}
    settings = Settings(state_dir=tmp_path, redis_port=free_port_block(redis_cluster.port_offsets(1)),
                        startup_timeout_s=60)
    sup = Supervisor(settings)
    [single] = redis_cluster.redis_services(settings)
    try:
        assert single.name == "redis" and sup.start(single) == "started"
        services.after_start(settings)["redis"]()
        assert redis_cluster.set_up(settings) == "single Redis"
        assert store.feature_store(settings).config.online_store.redis_type == "redis"
        assert _online(settings, schema.AREA_VIEW, [8])["area_trip_count"].isna().all()  # nothing loaded
    finally:
        sup.stop(single.name)
        os.environ.update(saved)
