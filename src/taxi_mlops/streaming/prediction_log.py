"""Prediction logs from the gateway to ``taxi.predictions``, without ever slowing a request.

``PredictionLogger.log`` only enqueues: it never blocks and never raises. librdkafka sends
in the background and keeps retrying while the broker is away (``message.timeout.ms``, 5
minutes by default), so logs written during a broker restart arrive once it is back. The
queue is bounded twice: librdkafka's ``queue.buffering.max.messages`` and our own in-flight
count; past the bound a log is dropped and counted, because a gateway that queues without
limit runs out of memory instead of serving. ``counters()`` says what happened.

A prediction log that fails its schema goes to ``taxi.deadletter`` with the reason.
"""

from __future__ import annotations

import logging
import threading
import time

from taxi_mlops.settings import Settings
from taxi_mlops.streaming import clients, events, topics

log = logging.getLogger("taxi_mlops.streaming.prediction_log")


class PredictionLogger:
    def __init__(self, bootstrap_servers: str | Settings, topic: str = topics.PREDICTIONS,
                 max_buffer: int = 50_000, message_timeout_s: float = 300.0,
                 client_id: str = "taxi-gateway-prediction-log"):
        from confluent_kafka import Producer

        self.topic = topic
        self.max_buffer = max_buffer
        self._producer = Producer(clients.producer_config(
            bootstrap_servers, client_id,
            **{"queue.buffering.max.messages": max_buffer,
               "message.timeout.ms": int(message_timeout_s * 1000),
               "linger.ms": 20}))
        self._lock = threading.Lock()
        self._in_flight = 0
        self._counts = {"logged": 0, "sent": 0, "dropped": 0, "delivery_errors": 0, "invalid": 0}
        self._last_error: str | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="prediction-log-poll", daemon=True)
        self._thread.start()

    # ---- the gateway's side ----------------------------------------------------------------
    def log(self, entry: events.PredictionLog | dict) -> bool:
        """Enqueue one log; True if queued. Never blocks, never raises."""
        try:
            if self._closed.is_set():
                self._count("dropped")
                return False
            try:
                entry = events.validate(self.topic, entry)
            except events.EventDecodeError as exc:
                self._dead_letter(entry, exc)
                return False
            with self._lock:
                if self._in_flight >= self.max_buffer:
                    self._counts["dropped"] += 1
                    return False
                self._in_flight += 1
            try:
                self._producer.produce(self.topic, value=entry.to_bytes(),
                                       key=(entry.trip_id or entry.request_id).encode(),
                                       on_delivery=self._on_delivery)
            except BufferError:
                with self._lock:
                    self._in_flight -= 1
                    self._counts["dropped"] += 1
                return False
            except Exception as exc:
                with self._lock:
                    self._in_flight -= 1
                    self._counts["delivery_errors"] += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                return False
            self._count("logged")
            return True
        except Exception as exc:  # the promise is "never raises": count anything unforeseen
            with self._lock:
                self._counts["delivery_errors"] += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
            return False

    def counters(self) -> dict:
        """``logged`` queued, ``sent`` acknowledged, ``buffered`` waiting, ``dropped`` (full or
        closed), ``delivery_errors`` (gave up after ``message.timeout.ms``), ``invalid`` (dead-lettered)."""
        with self._lock:
            return {**self._counts, "buffered": self._in_flight, "last_error": self._last_error}

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop accepting logs and wait up to ``timeout_s`` for the buffer; returns what is left."""
        self._closed.set()
        self._thread.join(timeout=2.0)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("%d prediction logs still unsent at close (broker down?); they are lost",
                        remaining)
        return remaining

    # ---- internals -------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _on_delivery(self, err, msg) -> None:
        if msg.topic() != self.topic:
            return  # a dead letter's report
        with self._lock:
            self._in_flight -= 1
            if err is None:
                self._counts["sent"] += 1
            else:
                self._counts["delivery_errors"] += 1
                self._last_error = str(err)

    def _dead_letter(self, entry, exc: events.EventDecodeError) -> None:
        import json

        raw = json.dumps(entry, default=str).encode() if isinstance(entry, dict) else str(entry).encode()
        letter = events.dead_letter(self.topic, raw, exc, source="gateway-prediction-log")
        try:
            self._producer.produce(topics.DEADLETTER, value=letter.to_bytes(), key=self.topic.encode())
        except Exception as produce_exc:  # a full queue: count it, never raise into a request
            self._last_error = f"dead letter not queued: {produce_exc}"
        self._count("invalid")

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.1)
            except Exception as exc:  # a callback bug must not stop deliveries
                self._last_error = f"poll: {exc}"
                time.sleep(0.1)
