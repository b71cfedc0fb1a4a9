"""Streams: topic rates (the broker's JMX exporter), consumer lag and feature freshness
(the stream processor), from Prometheus range queries."""

from __future__ import annotations

import streamlit as st

from taxi_mlops.ui import common

st.title("Streams")
FRESH = ("histogram_quantile({q}, sum by (le) (rate(taxi_stream_freshness_seconds_bucket[1m]))) * 1000")

c = st.columns(3)
with c[0], common.guard("Prometheus"):
    st.metric("events consumed/s", common.fmt(common.instant(
        "sum(rate(taxi_stream_events_consumed_total[1m]))"), "{:.1f}"))
with c[1], common.guard("Prometheus"):
    st.metric("consumer lag (messages)", common.fmt(common.instant("sum(taxi_stream_consumer_lag)"), "{:.0f}"))
with c[2], common.guard("Prometheus"):
    st.metric("feature freshness p99", common.fmt(common.instant(FRESH.format(q=0.99)), "{:.0f} ms"))

left, right = st.columns(2)
with left:
    common.range_chart("messages in per topic (/s)",
                       'sum by (topic) (rate(kafka_server_brokertopicmetrics_messagesin_total{topic!=""}[1m]))',
                       "topic", empty="no messages in this window")
    common.range_chart("consumer lag per topic (messages)", "sum by (topic) (taxi_stream_consumer_lag)", "topic")
with right:
    common.range_chart("feature freshness: Kafka timestamp → online store (ms)",
                       f"label_replace({FRESH.format(q=0.5)}, \"q\", \"p50\", \"\", \"\") or "
                       f"label_replace({FRESH.format(q=0.99)}, \"q\", \"p99\", \"\", \"\")", "q",
                       empty="no events processed in this window")
    common.range_chart("dead letters per topic and reason (per 5 min)",
                       "sum by (topic, reason) (increase(taxi_stream_events_dead_lettered_total[5m]))",
                       ("topic", "reason"), empty="no dead letters")
