"""What every page shares: the settings and clients, the time window, a guard that turns a
backend failure into a message naming it (the rest of the page keeps working), and charts
drawn from Prometheus range queries."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.ui import shaping
from taxi_mlops.ui.clients import BackendError, Clients

log = logging.getLogger("taxi_mlops.ui")
WINDOWS = {"last 15 minutes": 15, "last hour": 60, "last 6 hours": 360, "last 24 hours": 1440}


def settings() -> Settings:
    """From ``TAXI_*`` (the stack passes ``settings.as_env()``); cheap, so built per run."""
    return get_settings()


def clients() -> Clients:
    return Clients.from_settings(settings())


def window_minutes() -> float:
    """The charts' time range, chosen in the sidebar (kept across pages)."""
    label = st.session_state.get("window", "last hour")
    return WINDOWS.get(label, 60)


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Run one section of a page; a backend failure becomes a message naming the backend,
    anything else a one-line error: never a traceback, and the next section still runs."""
    try:
        yield
    except BackendError as exc:
        if exc.down:
            st.error(f"{what}: {exc}", icon=":material/power_off:")
        else:
            st.warning(f"{what}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a page must survive a surprise in one section
        log.exception("section %r failed", what)
        st.error(f"{what} failed: {type(exc).__name__}: {str(exc)[:300]}")


def range_chart(title: str, expr: str, label: str | tuple[str, ...], *, name: str = "value",
                empty: str = "no data in this window yet", kind: str = "line") -> None:
    """A chart of ``expr`` over the sidebar's window, one line per ``label`` value; the
    PromQL is shown under it (so a figure can be checked in Prometheus)."""
    with guard(title):
        series = clients().prometheus.query_range(expr, window_minutes())
        st.markdown(f"**{title}**")
        df = shaping.frame(series, label, name)
        if df.empty:
            st.info(empty)
        elif len(df) < 2:  # one sample (a series that just appeared): a line would be invisible
            st.scatter_chart(df, height=220)
        elif kind == "area":
            st.area_chart(df, height=220)
        else:
            st.line_chart(df, height=220)
        st.caption(f"`{expr}`")


def instant(expr: str) -> float | None:
    """One figure from Prometheus now (None when the series does not exist)."""
    return shaping.last_value(clients().prometheus.query(expr))


def fmt(value: float | None, pattern: str = "{:.3f}", missing: str = "–") -> str:
    """``missing`` for no value or NaN (a quantile over no requests)."""
    return missing if value is None or math.isnan(value) else pattern.format(value)
