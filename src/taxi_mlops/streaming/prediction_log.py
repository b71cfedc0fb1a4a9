"""Prediction logs from the gateway to ``taxi.predictions``, without ever slowing a request.

``PredictionLogger.log`` only enqueues: it never blocks and never raises. librdkafka sends
in the background and keeps retrying while the broker is away (``message.timeout.ms``, 5
minutes by default), so logs written during a broker restart arrive once it is back. The
queue is bounded twice: librdkafka's ``queue.buffering.max.messages`` and our own in-flight
count; past the bound a log is dropped and counted, because a gateway that queues without
limit runs out of memory instead of serving. ``counters()`` says what happened.

A prediction log that fails its schema goes to ``taxi.deadletter`` with the reason.

With a ``spool_dir``, every log is first appended to this process's spool (``spool.py``) and
marked there once Kafka acknowledges it; at start-up the spools of dead processes are sent
again in the background, so a gateway killed with logs in librdkafka's memory loses none.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

from taxi_mlops.settings import Settings
from taxi_mlops.streaming import clients, events, spool, topics

log = logging.getLogger("taxi_mlops.streaming.prediction_log")


class PredictionLogger:
    def __init__(self, bootstrap_servers: str | Settings, topic: str = topics.PREDICTIONS,
                 max_buffer: int = 50_000, message_timeout_s: float = 300.0,
                 client_id: str = "taxi-gateway-prediction-log", spool_dir: Path | None = None,
                 linger_ms: int = Settings.model_fields["prediction_log_linger_ms"].default):
        from confluent_kafka import Producer

        self.topic = topic
        self.max_buffer = max_buffer
        self._producer = Producer(clients.producer_config(
            bootstrap_servers, client_id,
            **{"queue.buffering.max.messages": max_buffer,
               "message.timeout.ms": int(message_timeout_s * 1000),
               "linger.ms": linger_ms}))
        self._lock = threading.Lock()
        self._in_flight = 0
        self._counts = {"logged": 0, "sent": 0, "dropped": 0, "delivery_errors": 0, "invalid": 0,
                        "recovered": 0, "spool_errors": 0}
        self._last_error: str | None = None
        self._message_timeout_s = message_timeout_s
        self._closed = threading.Event()
        self._spool = spool.Spool(spool_dir) if spool_dir is not None else None
        self._thread = threading.Thread(target=self._poll_loop, name="prediction-log-poll", daemon=True)
        self._thread.start()
        self._recovery = None
        if spool_dir is not None:
            self._recovery = threading.Thread(target=self._recover, args=(Path(spool_dir),),
                                              name="prediction-log-recovery", daemon=True)
            self._recovery.start()

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
            value = entry.to_bytes()
            seq = self._spooled(value)
            try:
                self._producer.produce(self.topic, value=value,
                                       key=(entry.trip_id or entry.request_id).encode(),
                                       on_delivery=lambda err, msg: self._on_delivery(err, msg, seq))
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
        closed), ``delivery_errors`` (gave up after ``message.timeout.ms``), ``invalid``
        (dead-lettered), ``recovered`` (sent again from a dead process's spool),
        ``spool_errors`` (logs not spooled: a full disk)."""
        with self._lock:
            return {**self._counts, "buffered": self._in_flight, "last_error": self._last_error}

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop accepting logs and wait up to ``timeout_s`` for the buffer; returns what is left."""
        self._closed.set()
        self._thread.join(timeout=2.0)
        remaining = self._producer.flush(timeout_s)
        if self._spool is not None:
            left = self._spool.close()
            if left:
                log.warning("%d prediction logs unacknowledged at close (broker down?); kept in "
                            "%s for the next gateway start to send", left, self._spool.dir)
        elif remaining:
            log.warning("%d prediction logs still unsent at close (broker down?); they are lost",
                        remaining)
        return remaining

    # ---- internals -------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _spooled(self, value: bytes) -> int | None:
        """Append to the spool before producing; a spool that cannot be written costs the
        durability of this one log, never the request."""
        if self._spool is None:
            return None
        try:
            return self._spool.append(value)
        except OSError as exc:
            with self._lock:
                self._counts["spool_errors"] += 1
                self._last_error = f"spool: {exc}"
            return None

    def _on_delivery(self, err, msg, seq: int | None = None) -> None:
        if msg.topic() != self.topic:
            return  # a dead letter's report
        with self._lock:
            self._in_flight -= 1
            if err is None:
                self._counts["sent"] += 1
            else:
                self._counts["delivery_errors"] += 1
                self._last_error = str(err)
        if err is None and seq is not None:
            try:
                self._spool.acknowledged(seq)
            except OSError as exc:  # at worst the record is sent again by the next start
                self._last_error = f"spool: {exc}"

    def _recover(self, root: Path) -> None:
        """Send what dead processes' spools hold unacknowledged; a folder goes once Kafka
        has all of it (else it stays claimed, for the next start to try again)."""
        for folder in spool.claim_orphans(root):
            values = spool.unacknowledged(folder)
            outcome = {"sent": 0, "failed": []}
            all_reported = threading.Event()
            lock = threading.Lock()

            def done(err, _msg, outcome=outcome, total=len(values)):
                with lock:
                    if err is None:
                        outcome["sent"] += 1
                    else:
                        outcome["failed"].append(str(err))
                    if outcome["sent"] + len(outcome["failed"]) >= total:
                        all_reported.set()

            if not values:
                all_reported.set()
            for value in values:
                try:
                    record = json.loads(value)
                    key = str(record.get("trip_id") or record.get("request_id") or "").encode()
                except (ValueError, AttributeError):
                    key = b""
                while not self._closed.is_set():
                    try:
                        self._producer.produce(self.topic, value=value, key=key, on_delivery=done)
                        break
                    except BufferError:  # the queue is full: let deliveries drain it
                        time.sleep(0.05)
            all_reported.wait(self._message_timeout_s + 5)
            if outcome["sent"] < len(values):
                log.warning("prediction logs of a dead gateway not all re-sent; kept in %s for the "
                            "next start", folder, extra={"values": len(values), "sent": outcome["sent"],
                                                        "errors": outcome["failed"][:3]})
                continue
            shutil.rmtree(folder, ignore_errors=True)
            self._count_n("recovered", len(values))
            if values:
                log.info("re-sent %d prediction logs a killed gateway had not had acknowledged",
                         len(values), extra={"spool": str(folder)})

    def _count_n(self, name: str, n: int) -> None:
        with self._lock:
            self._counts[name] += n

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
