"""``python -m taxi_mlops.retrain [--reason TEXT] [--every SECONDS]``: the loop once, or on a
schedule (``--every`` without a value uses ``settings.retrain_interval_s``). A scheduled
trigger goes through the same guard, so it never overlaps an alert-started run."""

from __future__ import annotations

import argparse
import json
import time

from taxi_mlops.observability import logs
from taxi_mlops.retrain import loop
from taxi_mlops.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reason", default="manual")
    parser.add_argument("--every", nargs="?", const=-1.0, type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.setup("retrain", settings.log_level)
    if args.every is None:
        outcome = loop.trigger(settings, args.reason, progress=print)
        print(json.dumps(outcome, indent=2, default=str))
        return 0 if outcome.get("started") and not outcome.get("error") else 1
    every = settings.retrain_interval_s if args.every < 0 else args.every
    if not every:
        parser.error("--every needs SECONDS or TAXI_RETRAIN_INTERVAL_S")
    while True:
        loop.trigger(settings, f"schedule (every {every:.0f}s)", progress=print)
        time.sleep(every)


if __name__ == "__main__":
    raise SystemExit(main())
