"""Local Kafka: start time of one broker (the baseline) and of a 3-node KRaft cluster, and
what a node crash costs the cluster: how long producers wait for the partitions the dead
node led, and how long the node takes to come back into every ISR after the keeper's restart.

Everything is started by the stack's own code (``stack.streaming.start_kafka``, the keeper's
``tick``) in temporary state directories on free ports >= 10000, and torn down at the end.

* start (cold): from nothing to every node answering, formatting included;
  start (warm): the same nodes stopped and started again (data kept).
* produce stall: a keyed producer (acks=all, idempotent) sends steadily to taxi.trips.raw;
  partition 0's leader is killed with SIGKILL; the stall is the time from the kill to the
  first acknowledged event of a partition the victim led.
* rejoin: the time from the kill to the victim back in the ISR of every partition
  (the keeper's backoff, set to 0.2 s here, included).

    .venv/bin/python bench/kafka_cluster_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from taxi_mlops.settings import Settings
from taxi_mlops.stack import streaming
from taxi_mlops.stack.keeper import Keeper
from taxi_mlops.stack.process import Supervisor, free_port_block, wait_for
from taxi_mlops.streaming import clients, topics


def make_settings(nodes: int) -> Settings:
    base = free_port_block(range(3 * nodes))
    return Settings(state_dir=Path(tempfile.mkdtemp(prefix=f"kafka-bench-{nodes}-")), kafka_nodes=nodes,
                    kafka_port=base, kafka_controller_port=base + 1, kafka_metrics_port=base + 2,
                    kafka_node_port_step=3, kafka_bootstrap_override=None, startup_timeout_s=180,
                    restart_backoff_s=0.2)


def timed_start(settings: Settings, sup: Supervisor) -> float:
    t = time.monotonic()
    streaming.start_kafka(sup, streaming.kafka_services(settings))
    return time.monotonic() - t


def stop_all(settings: Settings, sup: Supervisor) -> None:
    for service in reversed(streaming.kafka_services(settings)):
        sup.stop(service.name, timeout_s=30)


def crash_round(settings: Settings, sup: Supervisor) -> tuple[float, float]:
    """(produce stall, rejoin) in seconds for one SIGKILL of partition 0's leader."""
    from confluent_kafka import Producer

    parts = clients.admin(settings).list_topics(topics.TRIPS, timeout=10).topics[topics.TRIPS].partitions
    leader = parts[0].leader
    led = {p for p, m in parts.items() if m.leader == leader}
    victim = "kafka" if leader == 1 else f"kafka-{leader - 1}"
    acks: list[tuple[float, float, int]] = []  # (acknowledged, created (wall clock), partition)
    stop = threading.Event()

    def produce():
        producer = Producer(clients.producer_config(settings, "kafka-bench"))
        i = 0
        while not stop.is_set():
            try:
                producer.produce(topics.TRIPS, key=str(i % 77).encode(), value=json.dumps({"id": i}).encode(),
                                 on_delivery=lambda err, m: err is None and acks.append(
                                     (time.monotonic(), m.timestamp()[1] / 1000, m.partition())))
                i += 1
            except BufferError:
                pass
            producer.poll(0.002)
        producer.flush(120)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    wait_for(lambda: len(acks) > 2000, 60)
    old = sup.pid(victim)
    killed, killed_wall = time.monotonic(), time.time()

    def resumed() -> list[float]:  # events created after the kill, to a partition the victim led
        return [t for t, created, p in list(acks) if created > killed_wall and p in led]

    sup.kill(victim)
    wait_for(lambda: bool(resumed()), 120, 0.01)
    stall = min(resumed()) - killed
    keeper = Keeper(settings)
    wait_for(lambda: keeper.tick() or sup.pid(victim) not in (None, old), 180, 0.05)

    def rejoined() -> bool:
        md = clients.admin(settings).list_topics(timeout=10)
        return all(leader in p.isrs for t in topics.TOPICS for p in md.topics[t.name].partitions.values())

    wait_for(rejoined, 180, 0.05)
    rejoin = time.monotonic() - killed
    stop.set()
    thread.join(150)
    return stall, rejoin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    figures: dict[str, list[float]] = {}
    for nodes in (1, 3):
        settings = make_settings(nodes)
        sup = Supervisor(settings)
        try:
            figures[f"{nodes}-node start, cold (s)"] = [timed_start(settings, sup)]
            topics.ensure_topics(settings)
            warm = []
            for _ in range(args.rounds):
                stop_all(settings, sup)
                warm.append(timed_start(settings, sup))
            figures[f"{nodes}-node start, warm (s)"] = warm
            if nodes == 3:
                stalls, rejoins = [], []
                for _ in range(args.rounds):
                    stall, rejoin = crash_round(settings, sup)
                    stalls.append(stall)
                    rejoins.append(rejoin)
                figures["3-node: produce stall after SIGKILL of a leader (s)"] = stalls
                figures["3-node: kill -> back in every ISR (s)"] = rejoins
        finally:
            stop_all(settings, sup)
            shutil.rmtree(settings.state_dir, ignore_errors=True)
    for name, values in figures.items():
        print(f"{name:55s} median {statistics.median(values):6.1f}  runs {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
