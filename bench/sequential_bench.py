"""How the rollout's sequential test behaves when it is checked after every label.

(a) Type I error under continuous monitoring: A/A experiments (both arms accuracy 0.78,
    Bernoulli, 50/50 split), ``SequentialTest`` asked for a decision after EVERY label up to
    ``--aa-labels`` labels. Reported: false promotion rate and false decision rate (promote or
    rollback), against alpha. For contrast, the same label streams tested with the naive
    fixed-sample two-proportion z-test, also peeked after every label (|z| > 1.96 at any point,
    from the same ``min_labels`` per arm), and that z-test looked at once, at the end (the only
    way it is valid).
(b) Power: the challenger is 5 accuracy points better (0.78 vs 0.83); labels until the test
    promotes (median, p90), capped at ``--power-cap`` labels; how many never decided and how
    many were wrongly rolled back.

It drives ``taxi_mlops.rollout.sequential.SequentialTest`` itself (the label join's code path),
seeded, on ``--procs`` processes. Prints figures only (no asserts).

    .venv/bin/python bench/sequential_bench.py [--aa-sims 1000] [--power-sims 300] [--procs 2]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from taxi_mlops.rollout.sequential import SequentialTest  # noqa: E402

ALPHA, MIN_LABELS, SEED = 0.05, 30, 20241127
Z = 1.959963984540054  # two-sided 5%


def _stream(rng: np.random.Generator, n: int, p_control: float, p_treatment: float):
    treated = rng.random(n) < 0.5
    correct = rng.random(n) < np.where(treated, p_treatment, p_control)
    return treated, correct


def _naive_z(treated: np.ndarray, correct: np.ndarray, min_labels: int) -> tuple[str, str]:
    """(peeked after every label, looked at once at the end): 'promote' | 'rollback' | 'continue'."""
    nt = np.cumsum(treated)
    nc = np.arange(1, len(treated) + 1) - nt
    st = np.cumsum(correct & treated)
    sc = np.cumsum(correct & ~treated)
    with np.errstate(all="ignore"):
        pt, pc = st / nt, sc / nc
        pool = (st + sc) / (nt + nc)
        z = (pt - pc) / np.sqrt(pool * (1 - pool) * (1 / nt + 1 / nc))
    z = np.where((nt >= min_labels) & (nc >= min_labels) & np.isfinite(z), z, 0.0)
    crossed = np.flatnonzero(np.abs(z) > Z)
    peeked = "continue" if not len(crossed) else ("promote" if z[crossed[0]] > 0 else "rollback")
    end = "continue" if abs(z[-1]) <= Z else ("promote" if z[-1] > 0 else "rollback")
    return peeked, end


def _run_test(treated: np.ndarray, correct: np.ndarray) -> tuple[str, int]:
    """Feed the stream label by label, asking for a decision after each; (action, labels used)."""
    test = SequentialTest("accuracy", ALPHA, MIN_LABELS)
    for i, (t, c) in enumerate(zip(treated.tolist(), correct.tolist()), 1):
        # label 1 with a confident call that is right (0.9) or wrong (0.1)
        test.add("treatment" if t else "control", 0.9 if c else 0.1, 1)
        action = test.decision().action
        if action != "continue":
            return action, i  # the interval only shrinks: a decision is final
    return "continue", len(treated)


def aa_sim(args) -> dict:
    sim, n = args
    rng = np.random.default_rng([SEED, 1, sim])
    treated, correct = _stream(rng, n, 0.78, 0.78)
    action, used = _run_test(treated, correct)
    peeked, end = _naive_z(treated, correct, MIN_LABELS)
    return {"action": action, "labels": used, "z_peeked": peeked, "z_end": end}


def power_sim(args) -> dict:
    sim, cap = args
    rng = np.random.default_rng([SEED, 2, sim])
    treated, correct = _stream(rng, cap, 0.78, 0.83)
    action, used = _run_test(treated, correct)
    return {"action": action, "labels": used}


def _ci95(k: int, n: int) -> str:
    """Wilson interval of a rate, for reading the simulation error."""
    if n == 0:
        return "n/a"
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{max(0, centre - half):.3f}, {min(1, centre + half):.3f}]"


def _run(pool, fn, jobs, label: str) -> list[dict]:
    out, t0, step = [], time.perf_counter(), max(1, len(jobs) // 10)
    for r in pool.imap_unordered(fn, jobs, chunksize=4):
        out.append(r)
        if len(out) % step == 0 or len(out) == len(jobs):
            print(f"  {label}: {len(out)}/{len(jobs)} simulations, {time.perf_counter() - t0:.0f}s",
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aa-sims", type=int, default=1000)
    ap.add_argument("--aa-labels", type=int, default=4000)
    ap.add_argument("--power-sims", type=int, default=300)
    ap.add_argument("--power-cap", type=int, default=40_000)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()

    from importlib.metadata import version

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc={affinity} (cpu_count={os.cpu_count()}), {platform.machine()}, "
          f"{platform.platform()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, savvi {version('savvi')}; "
          f"{a.procs} processes; seed {SEED}")
    print(f"test: metric=accuracy alpha={ALPHA} min_labels={MIN_LABELS} per arm, decision asked "
          "after every label\n")

    t_start = time.perf_counter()
    with Pool(a.procs) as pool:
        print(f"(a) A/A: {a.aa_sims} experiments x {a.aa_labels} labels, both arms 0.78")
        t0 = time.perf_counter()
        aa = _run(pool, aa_sim, [(i, a.aa_labels) for i in range(a.aa_sims)], "A/A")
        t_aa = time.perf_counter() - t0
        print(f"(b) power: {a.power_sims} experiments, 0.78 vs 0.83, cap {a.power_cap} labels")
        t0 = time.perf_counter()
        pw = _run(pool, power_sim, [(i, a.power_cap) for i in range(a.power_sims)], "power")
        t_pw = time.perf_counter() - t0

    n = len(aa)
    promo = sum(r["action"] == "promote" for r in aa)
    decided = sum(r["action"] != "continue" for r in aa)
    z_promo = sum(r["z_peeked"] == "promote" for r in aa)
    z_decided = sum(r["z_peeked"] != "continue" for r in aa)
    z_end = sum(r["z_end"] != "continue" for r in aa)
    dec_labels = sorted(r["labels"] for r in aa if r["action"] != "continue")

    promoted = sorted(r["labels"] for r in pw if r["action"] == "promote")
    rolled = sum(r["action"] == "rollback" for r in pw)
    undecided = sum(r["action"] == "continue" for r in pw)
    labels_all = sorted(r["labels"] if r["action"] == "promote" else a.power_cap for r in pw)

    def pct(xs, q):
        return int(np.percentile(xs, q)) if xs else None

    print("\nsummary")
    print("-" * 96)
    print(f"{'(a) A/A, checked after every label':<58}{'rate':>8}  {'95% CI':>16}  {'count':>9}")
    rows = [
        ("SequentialTest: false promotions", promo),
        ("SequentialTest: false decisions (promote or rollback)", decided),
        ("naive z-test peeked every label: false promotions", z_promo),
        ("naive z-test peeked every label: false decisions", z_decided),
        (f"naive z-test looked at once at {a.aa_labels} labels: false decisions", z_end),
    ]
    for name, k in rows:
        print(f"{name:<58}{k / n:>8.3f}  {_ci95(k, n):>16}  {k:>5}/{n}")
    print(f"{'alpha (target bound for SequentialTest false decisions)':<58}{ALPHA:>8.3f}")
    if dec_labels:
        print(f"  SequentialTest false decisions happened at labels: median {pct(dec_labels, 50)}, "
              f"min {dec_labels[0]}, max {dec_labels[-1]}")
    print("-" * 96)
    m = len(pw)
    print(f"(b) power, 0.78 vs 0.83 (+5 points), {m} experiments, cap {a.power_cap} labels")
    print(f"  promoted: {len(promoted)}/{m} ({len(promoted) / m:.1%}); wrongly rolled back: "
          f"{rolled}; undecided at the cap: {undecided}")
    print(f"  labels to promote (promoted runs): median {pct(promoted, 50)}, p90 {pct(promoted, 90)}, "
          f"min {promoted[0] if promoted else None}, max {promoted[-1] if promoted else None}")
    print(f"  labels to decision counting undecided as the cap: median {pct(labels_all, 50)}, "
          f"p90 {pct(labels_all, 90)}")
    print("-" * 96)
    print(f"wall time: A/A {t_aa:.0f}s, power {t_pw:.0f}s, total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
