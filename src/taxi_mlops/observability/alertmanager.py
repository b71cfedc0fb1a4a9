"""Alertmanager configuration generated from ``Settings``.

One route to one webhook receiver: our alert receiver (``receiver.py``), which records every
notification durably and is where automated reactions (retraining) attach. ``send_resolved``
is on so the history shows when an alert stopped.
"""

from __future__ import annotations

from pathlib import Path

from taxi_mlops.observability.configfile import write_yaml
from taxi_mlops.observability.prometheus import duration
from taxi_mlops.settings import Settings

RECEIVER = "taxi-alert-receiver"
# An unresolved alert is re-sent every hour: often enough that a restarted receiver learns
# about it again soon, rarely enough not to flood the history.
REPEAT_INTERVAL = "1h"


def config_dir(settings: Settings) -> Path:
    return settings.state_dir / "alertmanager"


def config_path(settings: Settings) -> Path:
    return config_dir(settings) / "alertmanager.yml"


def data_dir(settings: Settings) -> Path:
    return config_dir(settings) / "data"


def build_config(settings: Settings) -> dict:
    wait = duration(settings.alert_group_wait_s)
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname", "job", "component"],
            "group_wait": wait,
            "group_interval": wait,
            "repeat_interval": REPEAT_INTERVAL,
        },
        "receivers": [{
            "name": RECEIVER,
            "webhook_configs": [{"url": f"{settings.alert_receiver_url}/alerts",
                                 "send_resolved": True, "max_alerts": 0}],
        }],
        # A component that is down explains its other alerts (no traffic, no freshness ...).
        "inhibit_rules": [{
            "source_matchers": ['alertname="TaxiComponentDown"'],
            "target_matchers": ['alertname!="TaxiComponentDown"'],
            "equal": ["component"],
        }],
    }


def write_config(settings: Settings) -> Path:
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    return write_yaml(config_path(settings), build_config(settings), __name__)
