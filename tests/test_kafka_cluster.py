"""A local 3-node KRaft cluster (``kafka_nodes=3``) started by the stack's own code: a node
killed with SIGKILL while keyed events are produced loses no acknowledged event, the producer
and a consumer carry on, and the keeper's restart brings the node back into every ISR.

No session stack: just the three nodes, on free ports, with their own state dir.
"""

from __future__ import annotations

import json
import threading

import pytest

from taxi_mlops.settings import Settings
from taxi_mlops.stack import streaming
from taxi_mlops.stack.keeper import Keeper
from taxi_mlops.stack.process import Supervisor, free_port_block, pid_alive, wait_for
from taxi_mlops.streaming import clients, topics

pytestmark = pytest.mark.slow

NODES = 3
EVENTS = 30_000
TOPIC = topics.TRIPS  # the platform's declared topic: 4 partitions, keyed by pickup area


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = free_port_block(range(3 * NODES))
    settings = Settings(state_dir=tmp_path_factory.mktemp("kafka-cluster"), kafka_nodes=NODES,
                        kafka_port=base, kafka_controller_port=base + 1, kafka_metrics_port=base + 2,
                        kafka_node_port_step=3, kafka_bootstrap_override=None, startup_timeout_s=180,
                        restart_backoff_s=0.2)
    sup = Supervisor(settings)
    services = streaming.kafka_services(settings)
    try:
        assert streaming.start_kafka(sup, services) == ["started"] * NODES
        topics.ensure_topics(settings.kafka_bootstrap_servers)
        yield settings, sup
    finally:
        for service in reversed(services):
            sup.stop(service.name, timeout_s=30)


def _partitions(bootstrap: str, topic: str) -> dict:
    return clients.admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions


def test_topics_are_replicated_on_every_node(cluster):
    settings, _ = cluster
    admin = clients.admin(settings.kafka_bootstrap_servers)
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
    for topic in topics.TOPICS:
        for p in _partitions(settings.kafka_bootstrap_servers, topic.name).values():
            assert sorted(p.replicas) == [1, 2, 3] and sorted(p.isrs) == [1, 2, 3], (topic.name, p)
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["min.insync.replicas"].value == "2"


def test_a_killed_partition_leader_loses_no_acknowledged_event_and_rejoins(cluster):
    from confluent_kafka import Consumer, Producer, TopicPartition

    settings, sup = cluster
    bootstrap = settings.kafka_bootstrap_servers
    acked: set[int] = set()
    failed: list[str] = []
    consumed: list[int] = []
    stop = threading.Event()

    def on_delivery(err, msg):
        if err is None:
            acked.add(json.loads(msg.value())["id"])
        else:
            failed.append(str(err))

    def produce():
        producer = Producer(clients.producer_config(bootstrap, "cluster-test-producer"))
        for i in range(EVENTS):
            while True:
                try:
                    producer.produce(TOPIC, key=str(i % 77).encode(),
                                     value=json.dumps({"id": i}).encode(), on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full while a leader moves: wait
                    producer.poll(0.1)
            if i % 100 == 0:  # a steady stream, so the kill lands mid-way
                producer.poll(0.02)
        assert producer.flush(180) == 0

    def consume():
        consumer = Consumer(clients.consumer_config(bootstrap, "cluster-test-consumer", "cluster-test"))
        consumer.subscribe([TOPIC])
        try:
            while not stop.is_set():
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    consumed.append(json.loads(msg.value())["id"])
        finally:
            consumer.close()

    producer_thread = threading.Thread(target=produce, daemon=True)
    consumer_thread = threading.Thread(target=consume, daemon=True)
    consumer_thread.start()
    producer_thread.start()
    try:
        assert wait_for(lambda: len(acked) >= EVENTS // 3, 120), "the producer did not get going"
        # The leader of partition 0: the node that takes writes, not necessarily the controller.
        leader = _partitions(bootstrap, TOPIC)[0].leader
        victim = f"kafka-{leader - 1}" if leader > 1 else "kafka"
        old_pid = sup.pid(victim)
        acked_at_kill = len(acked)
        sup.kill(victim)
        assert not pid_alive(old_pid)

        producer_thread.join(timeout=240)
        assert not producer_thread.is_alive(), "the producer did not finish after the node died"
        assert failed == [] and len(acked) == EVENTS  # every event acknowledged, after the kill too
        assert acked_at_kill < EVENTS
        assert wait_for(lambda: acked <= set(consumed), 120), \
            f"consumer missed {len(acked - set(consumed))} acknowledged events"

        # The keeper's path: the node is wanted and dead, so a tick (after the backoff) restarts it.
        keeper = Keeper(settings)
        assert wait_for(lambda: keeper.tick() or sup.pid(victim) not in (None, old_pid), 180)
        node_id = leader
        assert wait_for(lambda: all(node_id in p.isrs for t in topics.TOPICS
                                    for p in _partitions(bootstrap, t.name).values()), 180), \
            "the restarted node did not rejoin every ISR"
    finally:
        stop.set()
        consumer_thread.join(timeout=30)

    # The log itself holds each acknowledged event exactly once (idempotent producer: a retry
    # during the leader change never duplicates): read every partition from start to end.
    reader = Consumer(clients.consumer_config(bootstrap, "cluster-test-reader", "cluster-test-reader"))
    parts = sorted(_partitions(bootstrap, TOPIC))
    ends = {p: reader.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in parts}
    reader.assign([TopicPartition(TOPIC, p, 0) for p in parts])
    seen: list[int] = []
    positions = {p: 0 for p in parts}

    def drained() -> bool:
        msg = reader.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append(json.loads(msg.value())["id"])
            positions[msg.partition()] = msg.offset() + 1
        return all(positions[p] >= ends[p] for p in parts)

    assert wait_for(drained, 120, interval_s=0)
    reader.close()
    assert len(seen) == len(set(seen)) == EVENTS
    assert set(seen) == acked
