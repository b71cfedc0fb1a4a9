"""Prometheus naming and bucket conventions shared by every component.

Names carry the ``taxi_`` prefix and base units (``_seconds``, ``_total``). Latency
histograms run from 1 ms to 1 s, the range of the serving SLO (p99 ≤ 100 ms); freshness
histograms go to 10 s, because an alert on "p99 above 1 s" needs buckets past 1 s to fire
(``histogram_quantile`` never returns more than the largest finite bucket).
"""

from __future__ import annotations

# prometheus_client's multiprocess folder variables (Feast reads the second). Importing feast
# sets them to a temporary folder of its own, so every process decides them explicitly.
MULTIPROC_VARS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
