"""How ``kafka_nodes`` becomes node configs, ports, scrape targets and topic replication
(pure: nothing is started)."""

from __future__ import annotations

import pytest

from taxi_mlops import cli
from taxi_mlops.observability import prometheus
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services, streaming
from taxi_mlops.streaming import broker, topics


def _settings(tmp_path, **kw) -> Settings:
    return Settings(state_dir=tmp_path, kafka_bootstrap_override=None, **kw)


@pytest.mark.parametrize("nodes, expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_is_three_copies_at_most_and_two_in_sync_from_three_nodes(nodes, expected):
    assert topics.replication(nodes) == expected


def test_the_default_single_broker_keeps_its_config(tmp_path):
    s = _settings(tmp_path)
    props = broker.broker_properties(s)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert props["node.id"] == 1 and props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    for key in ("default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "transaction.state.log.min.isr"):
        assert props[key] == 1, key
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert [x.name for x in streaming.kafka_services(s)] == ["kafka"]
    assert [t for t in prometheus.scrape_targets(s) if t[0] == "kafka"] == [("kafka", "127.0.0.1:9096", "kafka")]


def test_three_nodes_form_one_quorum_with_replicated_defaults(tmp_path):
    s = _settings(tmp_path, kafka_nodes=3)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    configs = [broker.broker_properties(s, i) for i in range(3)]
    assert [c["node.id"] for c in configs] == [1, 2, 3]
    assert {c["controller.quorum.voters"] for c in configs} == {
        "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"}
    assert configs[2]["listeners"] == "PLAINTEXT://127.0.0.1:9292,CONTROLLER://127.0.0.1:9293"
    assert configs[2]["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9292"
    assert len({c["log.dirs"] for c in configs}) == 3
    for c in configs:
        assert c["default.replication.factor"] == c["offsets.topic.replication.factor"] == 3
        assert c["min.insync.replicas"] == c["transaction.state.log.min.isr"] == 2
    assert configs[0]["log.dirs"] == str(tmp_path / "kafka" / "data")  # node 0: the single broker's dir
    assert configs[1]["log.dirs"] == str(tmp_path / "kafka-1" / "data")


def test_every_node_is_a_service_and_a_scrape_target(tmp_path):
    s = _settings(tmp_path, kafka_nodes=3)
    names = [x.name for x in services.all_services(s)]
    assert names[names.index("kafka"):names.index("kafka") + 3] == ["kafka", "kafka-1", "kafka-2"]
    assert all(streaming.is_kafka_node(n) for n in ("kafka", "kafka-1", "kafka-2"))
    assert not streaming.is_kafka_node("kafka-ui")
    node2 = streaming.kafka_service(s, 2)
    assert node2.url == "PLAINTEXT://127.0.0.1:9292" and node2.cwd == tmp_path / "kafka-2"
    assert any(part.endswith(":9296:" + str(tmp_path / "kafka-2" / "jmx-exporter.yaml"))
               for part in node2.command)
    kafka_targets = [t for t in prometheus.scrape_targets(s) if t[0] == "kafka"]
    assert kafka_targets == [("kafka", "127.0.0.1:9096", "kafka"), ("kafka", "127.0.0.1:9196", "kafka-1"),
                             ("kafka", "127.0.0.1:9296", "kafka-2")]
    job = next(j for j in prometheus.build_config(s)["scrape_configs"] if j["job_name"] == "kafka")
    assert len(job["static_configs"]) == 3


def test_node_ports_that_collide_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="TAXI_KAFKA_NODE_PORT_STEP"):
        _settings(tmp_path, kafka_nodes=3, kafka_node_port_step=1)  # 9093 is node 0's controller
    with pytest.raises(ValueError, match="kafka_nodes"):
        _settings(tmp_path, kafka_nodes=0)


def test_data_formatted_for_one_size_refuses_another(tmp_path):
    broker.check_cluster_size(_settings(tmp_path, kafka_nodes=3))  # fresh: records 3
    broker.check_cluster_size(_settings(tmp_path, kafka_nodes=3))
    with pytest.raises(broker.BrokerSetupError, match="--kafka-nodes 3"):
        broker.check_cluster_size(_settings(tmp_path))


def test_a_single_broker_formatted_before_the_count_was_recorded_stays_single(tmp_path):
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    broker.check_cluster_size(_settings(tmp_path))
    with pytest.raises(broker.BrokerSetupError, match="1-node"):
        broker.check_cluster_size(_settings(tmp_path, kafka_nodes=3))


def test_the_cluster_id_is_claimed_once(tmp_path):
    s = _settings(tmp_path, kafka_nodes=3)
    assert broker.cluster_id(s) == broker.cluster_id(s)
    assert broker.cluster_id(s) == (tmp_path / "kafka" / "cluster.id").read_text().strip()


def test_up_with_a_bad_node_count_says_which_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAXI_STATE_DIR", str(tmp_path))
    assert cli.main(["up", "--kafka-nodes", "0"]) == 1
    assert "kafka_nodes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started
