"""Feature drift detection, in process (no Kafka, no replay): rows of the data set through
the data-quality validator and ``streaming/drift.py`` in windows, as the worker does, with
injected scenarios and clean control windows.

The reference is a pipeline run's StatisticsGen train split (and its SchemaGen schema for
the validator). The rows are the data set's, shuffled: the eval split cannot be picked out
without TFX (ExampleGen splits by hash), so about 2/3 of them are training rows, and a
shuffled stream is the stationary case. The time-ordered and file-ordered streams are
printed beside it: 2013 records 44% of trip_miles as 0 against 27% over the four years, and
the file is clustered by pickup location, so its slices really drift on pickup_*.
Throughput counts validation + drift per event dict (the worker also decodes JSON).

Label shift (the tip rate moves, the trips do not) goes through the label join's own function,
``live_performance.label_shift``, on the data set's ``big_tipper`` column, shuffled, against
the same run's eval split (StatisticsGen ``Split-eval``: the examples whose buckets make the
``calibration.json`` the join reads; or ``--calibration`` to read that file itself). As in the
join, the window slides: the last ``--label-window`` labels are tested every ``--label-step``
labels, and an alarm needs a sixth of a window of tests in a row (the alert's ``for: 10m`` over
the join's one-hour window). A scenario flips a share of the labels from its onset on; a clean
control window counts as a false alarm when an alarm starts inside it.

Goals compared: detection accuracy >= 95% over scenario + clean windows, median detection
delay <= 2 windows, <= 1 false alarm per 100k clean events, >= 5,000 events/s on one core.

    .venv/bin/python bench/drift_bench.py [--pipeline-root .state/pipeline] [--clean-windows 200]

Without a pipeline run under ``--pipeline-root`` (a fresh clone), ``taxi-mlops up`` and
``taxi-mlops train`` make one in ``.state/pipeline`` (about 3 minutes of training).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from taxi_mlops.features import tables
from taxi_mlops.settings import get_settings
from taxi_mlops.streaming import drift
from taxi_mlops.streaming import live_performance as lp
from taxi_mlops.streaming import quality_checks as qc

FIELDS = list(drift.DEFAULT_FEATURES)
Mutate = Callable[[dict, set, np.random.Generator], None]


@dataclass
class Scenario:
    name: str
    expect: tuple[str, ...]  # features that must be named (any one of them)
    mutate: Mutate | None  # in place on (fields, present); None: not applicable
    note: str = ""


def _scale(field, k):
    def f(e, _p, _r):
        e[field] = e[field] * k
    return f


def _share(p, fn):
    def f(e, present, rng):
        if rng.random() < p:
            fn(e, present, rng)
    return f


def _drop(field):
    def f(e, present, _r):
        present.discard(field)
        e[field] = None
    return f


def _set(field, value):
    def f(e, _p, _r):
        e[field] = value
    return f


SCENARIOS = [
    Scenario("fare x1.5", ("fare",), _scale("fare", 1.5)),
    Scenario("fare x3", ("fare",), _scale("fare", 3.0)),
    Scenario("fare in cents (x100)", ("fare",), _scale("fare", 100.0)),
    Scenario("fare +$3 surcharge", ("fare",), lambda e, p, r: e.__setitem__("fare", e["fare"] + 3.0)),
    Scenario("trip_miles as km (x1.609)", ("trip_miles",), _scale("trip_miles", 1.609)),
    Scenario("trip_seconds as minutes (/60)", ("trip_seconds",), _scale("trip_seconds", 1 / 60)),
    Scenario("trip_seconds x2 (congestion)", ("trip_seconds",), _scale("trip_seconds", 2.0)),
    Scenario("payment mix: 40% of cash paid by card", ("payment_type",),
             lambda e, p, r: e["payment_type"] == "Cash" and r.random() < 0.4
             and e.__setitem__("payment_type", "Credit Card")),
    Scenario("new payment_type 'Mobile' (25%)", ("payment_type",), _share(0.25, _set("payment_type", "Mobile"))),
    Scenario("company missing surge (40% null)", ("company",), _share(0.4, _drop("company"))),
    Scenario("company renamed (new category)", ("company",),
             lambda e, p, r: e["company"] == "Taxi Affiliation Services"
             and e.__setitem__("company", "TAS Holdings LLC")),
    Scenario("null storm: trip_miles not sent (30%)", ("trip_miles",), _share(0.3, _drop("trip_miles"))),
    Scenario("dropoff area unknown (-1) for 40%", ("dropoff_community_area",),
             _share(0.4, _set("dropoff_community_area", -1))),
    Scenario("GPS outage: pickup lat/long 0 for 40%", ("pickup_latitude", "pickup_longitude"),
             _share(0.4, lambda e, p, r: e.update(pickup_latitude=0.0, pickup_longitude=0.0))),
    Scenario("pickup_longitude sign lost", ("pickup_longitude",),
             lambda e, p, r: e.__setitem__("pickup_longitude", abs(e["pickup_longitude"]))),
    Scenario("pickup area shifted +10", ("pickup_community_area",),
             lambda e, p, r: e["pickup_community_area"] > 0
             and e.__setitem__("pickup_community_area", min(77, e["pickup_community_area"] + 10))),
    Scenario("hour-of-day +8h (report-only feature)", ("trip_start_hour",),
             lambda e, p, r: e.__setitem__("trip_start_hour", (e["trip_start_hour"] + 8) % 24),
             "trip_start_hour is scored but not decided (a live window's clock sets it)"),
]
PROBES = [  # at or below the thresholds on purpose: where detection stops
    Scenario("fare x1.1", ("fare",), _scale("fare", 1.1)),
    Scenario("fare x1.2", ("fare",), _scale("fare", 1.2)),
    Scenario("trip_miles x1.3", ("trip_miles",), _scale("trip_miles", 1.3)),
    Scenario("company missing 10%", ("company",), _share(0.1, _drop("company"))),
]


# ---- label shift -------------------------------------------------------------------------------
LABEL = "big_tipper"
FOR_SHARE = 10 / 60  # TaxiLabelShift's `for: 10m` over the label join's 1 h window


@dataclass
class LabelScenario:
    name: str
    change: float  # relative change of the big-tipper rate from the onset on


LABEL_SCENARIOS = [
    LabelScenario("label shift: tip rate -30% (tippers -> none)", -0.3),
    LabelScenario("label shift: tip rate -40%", -0.4),
    LabelScenario("label shift: tip rate +30% (none -> tippers)", 0.3),
]
LABEL_PROBES = [
    LabelScenario("label shift: tip rate -10%", -0.1),
    LabelScenario("label shift: tip rate -20%", -0.2),
]


def shift_labels(labels: np.ndarray, onset: int, change: float, base_rate: float, rng) -> np.ndarray:
    """From ``onset`` on, flip big tippers to none (a drop) or others to big tippers (a rise)
    so the rate moves by ``change`` relative; the trips themselves are untouched."""
    out = labels.copy()
    after = np.arange(len(out)) >= onset
    if change < 0:
        out[after & (out == 1) & (rng.random(len(out)) < -change)] = 0
    else:
        out[after & (out == 0) & (rng.random(len(out)) < change * base_rate / (1 - base_rate))] = 1
    return out


@dataclass
class LabelRun:
    alarms: list  # (labels seen, the test completing the alarm) where an alarm started
    tests: int
    shifted: int  # tests that said shifted


class LabelMonitor:
    """The label join's sliding window over a label stream: the last ``window`` labels tested
    by ``live_performance.label_shift`` every ``step`` labels; an alarm starts when ``sustain``
    tests in a row say shifted (Prometheus' ``for``)."""

    def __init__(self, reference: lp.LabelReference, window: int, step: int, sustain: int):
        self.reference, self.window, self.step, self.sustain = reference, window, step, sustain

    def run(self, labels: np.ndarray) -> LabelRun:
        cum = np.concatenate([[0], np.cumsum(labels)])
        out, streak = LabelRun([], 0, 0), 0
        for end in range(self.step, len(labels) + 1, self.step):
            start = max(0, end - self.window)
            shift = lp.label_shift(int(cum[end] - cum[start]), end - start, self.reference)
            out.tests += shift is not None
            streak = streak + 1 if shift is not None and shift.shifted else 0
            out.shifted += bool(streak)
            if streak == self.sustain:
                out.alarms.append((end, shift))
        return out


def eval_label_reference(stats_uri: Path) -> lp.LabelReference:
    """The eval split's big tippers from StatisticsGen (the label's mean over its examples)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString((stats_uri / "Split-eval" / "FeatureStats.pb").read_bytes())
    feat = next(f for f in stats.datasets[0].features if (f.path.step or [f.name])[-1] == LABEL)
    n = int(feat.num_stats.common_stats.num_non_missing)
    return lp.LabelReference(positives=round(feat.num_stats.mean * n), examples=n)


def latest(root: Path, component: str, kind: str) -> Path:
    runs = sorted((root / component / kind).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    return runs[-1]


class Pipeline:
    """Validation + drift per event, scored per window, as ``quality.DataQualityWorker``."""

    def __init__(self, validator: qc.Validator, reference: drift.DriftReference, thresholds: drift.Thresholds,
                 window_events: int):
        self.validator, self.reference, self.thresholds = validator, reference, thresholds
        self.window_events = window_events
        self.window = drift.DriftWindow(FIELDS)
        self.in_window = 0
        self.events = 0
        self.violating = 0

    def add(self, fields: dict, present: set) -> drift.DriftResult | None:
        """One event; the drift result when it closes a window that was scored."""
        if self.validator.check(fields, present):
            self.violating += 1
        self.window.add(fields, present)
        self.events += 1
        self.in_window += 1
        if self.in_window < self.window_events:
            return None
        self.in_window = 0
        result = drift.score(self.reference, self.window, self.thresholds)
        if result is not None:
            self.window.clear()
        return result


def run_stream(pipe: Pipeline, rows: list[dict], rng, mutate: Mutate | None = None, onset: int = 0):
    """Feed rows (mutated from ``onset`` on); [(events since onset at window close, result)]."""
    out = []
    for i, row in enumerate(rows):
        fields, present = dict(row), set(FIELDS)
        if mutate is not None and i >= onset:
            mutate(fields, present, rng)
        result = pipe.add(fields, present)
        if result is not None:
            out.append((i + 1 - onset, result))
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings = get_settings()
    parser.add_argument("--pipeline-root", type=Path, default=settings.pipeline_root)
    parser.add_argument("--window", type=int, default=settings.quality_window_events)
    parser.add_argument("--clean-windows", type=int, default=200)
    parser.add_argument("--scenario-windows", type=int, default=3, help="windows per scenario run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario (different rows, onset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-window", type=int, default=None, help="labels per window (default --window)")
    parser.add_argument("--label-step", type=int, default=50, help="labels between two tests of the window")
    parser.add_argument("--label-repeats", type=int, default=10, help="runs per label scenario (cheap)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="a run's evaluation/calibration.json as the label reference (default: the "
                             "pipeline run's StatisticsGen eval split, the same examples)")
    args = parser.parse_args()
    label_window = args.label_window or args.window

    stats_uri = latest(args.pipeline_root, "StatisticsGen", "statistics")
    schema_uri = latest(args.pipeline_root, "SchemaGen", "schema")
    thresholds = drift.Thresholds.from_settings(settings)
    reference = drift.build_reference(drift.train_statistics(stats_uri), "bench", str(stats_uri))
    validator = qc.Validator(qc.load_schema(schema_uri), qc.load_statistics(stats_uri))
    trips = tables.load_trips(settings.data_csv)
    rows = trips[FIELDS].to_dict("records")
    rng = np.random.default_rng(args.seed)
    print(f"machine: {machine()}")
    print(f"reference: {stats_uri} (train split, {reference.num_examples} trips, {len(reference.features)} "
          f"features); rows: {len(rows)} from {settings.data_csv.name}, shuffled")
    print(f"window {args.window} events; thresholds: JS {thresholds.js}, shape JS {thresholds.shape_js}, "
          f"L-inf {thresholds.linf}, missing {thresholds.missing}, min {thresholds.min_events} events; report-only: "
          f"{', '.join(thresholds.report_only)}")
    if args.calibration is not None:
        label_ref = lp.label_reference(json.loads(args.calibration.read_text()))
        label_src = str(args.calibration)
    else:
        label_ref, label_src = eval_label_reference(stats_uri), f"{stats_uri} (eval split)"
    labels = trips[LABEL].to_numpy(dtype=int)
    sustain = max(1, math.ceil(label_window * FOR_SHARE / args.label_step))
    monitor = LabelMonitor(label_ref, label_window, args.label_step, sustain)
    print(f"labels: reference {label_src}: {label_ref.positives}/{label_ref.examples} big tippers = "
          f"{label_ref.rate:.4f} (data set {labels.mean():.4f}); sliding window of {label_window} labels "
          f"tested every {args.label_step}, alarm after {sustain} shifted tests in a row; Fisher exact "
          f"p < {lp.LABEL_SHIFT_ALPHA:g}, |change| >= {lp.LABEL_SHIFT_MIN_EFFECT:.0%}, "
          f"from {lp.LABEL_SHIFT_MIN_LABELS} labels\n")

    def sample(n: int) -> list[dict]:
        return [rows[i] for i in rng.choice(len(rows), n, replace=n > len(rows))]

    # ---- clean control windows (also the throughput run) ---------------------------------
    pipe = Pipeline(validator, reference, thresholds, args.window)
    clean_rows = sample(args.clean_windows * args.window)
    started = time.process_time()
    clean = run_stream(pipe, clean_rows, rng)
    cpu_s = time.process_time() - started
    false_alarms = [r for _, r in clean if r.is_drift]
    js_max = max(s.get(drift.JS, 0) for _, r in clean for f, s in r.scores.items() if f not in thresholds.report_only)
    shape_max = max((s[drift.JS_SHAPE] for _, r in clean for f, s in r.scores.items()
                     if drift.JS_SHAPE in s and f not in thresholds.report_only), default=0.0)
    linf_max = max(s.get(drift.LINF, 0) for _, r in clean for s in r.scores.values())
    print(f"clean: {len(clean)} windows, {pipe.events} events, {len(false_alarms)} drifted "
          f"({', '.join(sorted({f for r in false_alarms for f in r.drifted})) or 'none'}); "
          f"max decided JS {js_max:.3f}, shape JS {shape_max:.3f}, L-inf {linf_max:.3f}; "
          f"{pipe.violating} trips with violations")

    # The data set as `taxi-mlops replay` sends it (time order), and as stored (file order):
    # not stationary, so reported beside the shuffled control, not counted in it.
    for label, ordered in (("time order", trips.sort_values(["event_timestamp", "trip_id"], kind="stable")),
                           ("file order", trips)):
        p = Pipeline(validator, reference, thresholds, args.window)
        out = run_stream(p, ordered[FIELDS].to_dict("records"), rng)
        named = sorted({f for _, r in out for f in r.drifted})
        print(f"{label}: {sum(r.is_drift for _, r in out)}/{len(out)} windows drifted ({', '.join(named) or 'none'})")

    # ---- labels: clean control, then the same two orders -----------------------------------
    clean_labels = labels[rng.choice(len(labels), args.clean_windows * label_window, replace=True)]
    started = time.process_time()
    label_clean = monitor.run(clean_labels)
    label_cpu_s = time.process_time() - started
    alarmed = {(end - 1) // label_window for end, _ in label_clean.alarms}
    print(f"clean labels: {args.clean_windows} windows, {len(clean_labels)} labels, {label_clean.tests} tests, "
          f"{label_clean.shifted} said shifted, {len(label_clean.alarms)} alarms ({len(alarmed)} windows)")
    ordered = trips.sort_values(["event_timestamp", "trip_id"], kind="stable")
    for label, stream in (("time order", ordered), ("file order", trips)):
        y = stream[LABEL].to_numpy(dtype=int)
        out = monitor.run(y)
        rates = [y[i:i + label_window].mean() for i in range(0, len(y) - label_window + 1, label_window)]
        note = ""
        if label == "time order":  # the tip rate really moved over the four years
            by_year = stream.groupby(stream["event_timestamp"].dt.year)[LABEL].mean()
            note = "; by year " + ", ".join(f"{year} {rate:.3f}" for year, rate in by_year.items())
        print(f"labels, {label}: {len(out.alarms)} alarms over {len(y)} labels; window rates "
              f"{min(rates):.3f}-{max(rates):.3f}{note}")

    # ---- scenarios ------------------------------------------------------------------------
    print(f"\n{'scenario':44s} {'detected':>9s} {'delay (events)':>15s}  named / top score")
    delays, scenario_hits, scenario_runs = [], 0, 0  # delays in windows (events or labels)
    label_delays, label_hits, label_runs = [], 0, 0

    def label_row(sc: LabelScenario) -> tuple[int, list]:
        """Runs of one label scenario through the monitor; (hits, delays in labels)."""
        hits, run_delays, effects = 0, [], []
        for _ in range(args.label_repeats):
            onset = int(rng.integers(0, label_window))  # mid-window, as the feature scenarios
            y = labels[rng.choice(len(labels), onset + args.scenario_windows * label_window, replace=True)]
            out = monitor.run(shift_labels(y, onset, sc.change, float(labels.mean()), rng))
            hit = next(((end, shift) for end, shift in out.alarms if end > onset), None)
            if hit:
                hits += 1
                run_delays.append(hit[0] - onset)
                effects.append(hit[1].effect)
        delay = f"{statistics.median(run_delays):,.0f}" if run_delays else "-"
        top = f"change {statistics.median(effects):+.2f} at alarm" if effects else "-"
        print(f"{sc.name:44s} {hits:>4d}/{args.label_repeats:<4d} {delay:>15s}  {LABEL if hits else '-'} / {top}")
        return hits, run_delays

    for group, items in (("scenario", SCENARIOS), ("probe", PROBES)):
        if group == "probe":
            print("\nprobes (at or below the thresholds on purpose; not in the accuracy):")
            for sc in LABEL_PROBES:
                label_row(sc)
        for sc in items:
            if sc.mutate is None:
                print(f"{sc.name:44s} {'N/A':>9s} {'':>15s}  {sc.note}")
                continue
            hits, runs_delays, named, top = 0, [], set(), {}
            for _ in range(args.repeats):
                onset = int(rng.integers(0, args.window))  # mid-window: the first window is mixed
                p = Pipeline(validator, reference, thresholds, args.window)
                out = run_stream(p, sample(onset + args.scenario_windows * args.window), rng, sc.mutate, onset)
                for f in sc.expect:
                    for _, r in out:
                        top[f] = max(top.get(f, 0.0), max(r.scores.get(f, {}).values(), default=0.0))
                hit = next(((d, r) for d, r in out if d > 0 and set(sc.expect) & set(r.drifted)), None)
                if hit:
                    hits += 1
                    runs_delays.append(hit[0])
                    named |= set(hit[1].drifted)
            if group == "scenario" and sc.name.endswith("(report-only feature)"):
                group_note = "  (report-only: not counted)"
            else:
                group_note = ""
                if group == "scenario":
                    scenario_hits += hits
                    scenario_runs += args.repeats
                    delays.extend(d / args.window for d in runs_delays)
            delay = f"{statistics.median(runs_delays):,.0f}" if runs_delays else "-"
            scores = ", ".join(f"{f} {v:.2f}" for f, v in top.items())
            print(f"{sc.name:44s} {hits:>4d}/{args.repeats:<4d} {delay:>15s}  "
                  f"{', '.join(sorted(named)) or '-'} / {scores}{group_note}")
        if group == "scenario":
            for sc in LABEL_SCENARIOS:
                hits, run_delays = label_row(sc)
                label_hits += hits
                label_runs += args.label_repeats
                label_delays.extend(run_delays)
                delays.extend(d / label_window for d in run_delays)

    clean_quiet = len(clean) - len(false_alarms)
    labels_quiet = args.clean_windows - len(alarmed)
    total = scenario_runs + label_runs + len(clean) + args.clean_windows
    correct = scenario_hits + label_hits + clean_quiet + labels_quiet
    per_100k = len(false_alarms) / (len(clean) * args.window) * 1e5
    label_per_100k = len(label_clean.alarms) / len(clean_labels) * 1e5
    median_delay = statistics.median(delays) if delays else float("nan")
    label_delay = statistics.median(label_delays) if label_delays else float("nan")
    throughput = pipe.events / cpu_s
    print(f"\naccuracy over scenario runs + clean windows: {correct}/{total} = {correct / total:.1%} (goal >= 95%)")
    print(f"  features: scenarios detected {scenario_hits}/{scenario_runs}; clean windows quiet "
          f"{clean_quiet}/{len(clean)}")
    print(f"  labels: scenarios detected {label_hits}/{label_runs}; clean windows quiet "
          f"{labels_quiet}/{args.clean_windows}")
    print(f"median detection delay: {median_delay:.2f} windows after onset (goal <= 2 windows); "
          f"labels alone {label_delay:,.0f} labels = {label_delay / label_window:.2f} windows")
    print(f"false alarms: {per_100k:.2f} per 100k clean events, {label_per_100k:.2f} per 100k clean labels "
          f"(goal <= 1)")
    print(f"throughput, validation + drift: {throughput:,.0f} events/s on one core (CPU time; goal >= 5,000)")
    print(f"label-shift test: {label_cpu_s / max(1, label_clean.tests) * 1e6:,.0f} us per window tested "
          f"(one Fisher exact test; the join runs one per version per second at most)")


if __name__ == "__main__":
    main()
