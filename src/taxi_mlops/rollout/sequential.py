"""An always-valid sequential test of "is the treatment better than the control?".

Why a sequential test at all: labels arrive one by one, and the label join looks at the
experiment after every one of them. A fixed-sample test (t-test or z-test at p < 0.05) is only
valid when it is looked at once, at a sample size chosen in advance; checked after every label
it crosses its threshold by chance in roughly a third of A/A experiments (``bench/
sequential_bench.py`` measures it), i.e. it would promote a model that is no better most of the
time it is run long enough.

Why this one is valid under continuous monitoring: it is a *confidence sequence*. Lindon et al.
(2024, "Anytime-valid linear models and regression adjusted causal inference in randomized
experiments") derive, for the coefficients of a Gaussian linear model, a Bayes factor that is a
nonnegative martingale under the null; Ville's inequality bounds the probability that it *ever*
exceeds 1/alpha by alpha. Its inversion is a sequence of intervals that contains the true
coefficient at *all* sample sizes simultaneously with probability >= 1 - alpha, so the decision
rule "act the first time the interval excludes 0" has type I error <= alpha however often it
is checked and whenever it stops. Each label's outcome (correct or not, or minus its log-loss)
is regressed on ``[1, is_treatment]``; the coefficient of ``is_treatment`` is the treatment
effect (difference of mean outcomes), so one coefficient's interval answers the question.
The running intersection of the intervals (what ``infer()`` keeps) is still valid, and makes a
decision final: an interval that excluded 0 never includes it again.

Inference starts only when both arms have ``min_labels`` labels: restricting a sequence that is
valid at every n to the n >= n0 keeps it valid, and it keeps the Gaussian approximation away
from the first few binary outcomes (and their tiny, unstable variance estimates). Before that,
and while every outcome seen is identical (zero residual variance: savvi would divide by zero),
the test says "continue" and never decides.

Why ``savvi`` rather than a hand-written mSPRT: the boundary involves a mixture Bayes factor
with a t-statistic, degrees of freedom and a prior scale; a small algebra slip there silently
breaks the error guarantee, and nothing in a unit test would show it. savvi is the maintained
(MIT) implementation of exactly this paper by one of its authors' group, with recursive least
squares updates (~50 us per label), and the benchmark checks its false-decision rate empirically.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from savvi.linear_regression import LinearRegression

Metric = Literal["accuracy", "log_loss"]
Action = Literal["promote", "rollback", "continue"]
_EPS = 1e-6


def outcome(metric: Metric, probability: float, label: int) -> float:
    """One label's outcome, "higher is better" for both metrics: 1/0 for a correct/wrong call
    at 0.5 (accuracy), or minus the log-loss of the probability (log_loss)."""
    label = 1 if label else 0
    if metric == "accuracy":
        return float((probability >= 0.5) == bool(label))
    if metric == "log_loss":
        p = min(max(float(probability), _EPS), 1 - _EPS)
        return math.log(p) if label else math.log(1 - p)
    raise ValueError(f"metric must be 'accuracy' or 'log_loss', got {metric!r}")


@dataclass(frozen=True)
class Decision:
    """What the test says now. ``ci_low``/``ci_high`` bound the treatment effect (treatment mean
    outcome minus control mean outcome); None while there is no interval yet."""

    action: Action
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_control: int
    n_treatment: int
    control_mean: float | None
    treatment_mean: float | None
    reason: str

    def to_dict(self) -> dict:
        """JSON-safe (infinite bounds become None)."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, float) and not math.isfinite(value):
                d[key] = None
        return d


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


class SequentialTest:
    """Feed ``add()`` after every label; ask ``decision()`` whenever (as often as) you like."""

    def __init__(self, metric: Metric = "accuracy", alpha: float = 0.05, min_labels: int = 30,
                 phi: float = 1.0):
        if metric not in ("accuracy", "log_loss"):
            raise ValueError(f"metric must be 'accuracy' or 'log_loss', got {metric!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.metric, self.alpha, self.min_labels = metric, alpha, max(int(min_labels), 2)
        self._lr = LinearRegression(alpha=alpha, p=2, phi=phi)
        self.n = {"control": 0, "treatment": 0}
        self._sum = {"control": 0.0, "treatment": 0.0}
        self._sumsq = {"control": 0.0, "treatment": 0.0}
        self._inferred = False  # at least one interval computed (non-degenerate, past min_labels)

    # ---- feeding ----------------------------------------------------------------------------
    def add(self, variant: str, probability: float, label: int) -> float:
        """One joined label of ``variant``; returns its outcome."""
        y = outcome(self.metric, probability, label)
        self.add_outcome(variant, y)
        return y

    def add_outcome(self, variant: str, y: float) -> None:
        """An outcome computed earlier (the store keeps them: a restart replays these)."""
        if variant not in self.n:
            raise ValueError(f"variant must be 'control' or 'treatment', got {variant!r}")
        self.n[variant] += 1
        self._sum[variant] += y
        self._sumsq[variant] += y * y
        with np.errstate(all="ignore"):
            self._lr.update(np.array([y, 1.0, 1.0 if variant == "treatment" else 0.0]))
            if self._ready() and not self._degenerate():
                self._lr.infer()
                self._inferred = True

    # ---- state ------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.n["control"] >= self.min_labels and self.n["treatment"] >= self.min_labels

    def _degenerate(self) -> bool:
        """No residual variance yet (every outcome within each arm identical)."""
        ss = 0.0
        for v, n in self.n.items():
            if n:
                ss += self._sumsq[v] - self._sum[v] ** 2 / n
        return ss <= 1e-9 * max(1, self.n["control"] + self.n["treatment"])

    def mean(self, variant: str) -> float | None:
        n = self.n[variant]
        return self._sum[variant] / n if n else None

    def decision(self) -> Decision:
        n_c, n_t = self.n["control"], self.n["treatment"]
        m_c, m_t = self.mean("control"), self.mean("treatment")
        common = dict(n_control=n_c, n_treatment=n_t, control_mean=m_c, treatment_mean=m_t)
        diff = (m_t - m_c) if m_c is not None and m_t is not None else None
        if not self._ready():
            return Decision("continue", diff, None, None, None, **common,
                            reason=f"waiting for {self.min_labels} labels per arm "
                                   f"(control {n_c}, treatment {n_t})")
        if not self._inferred:
            return Decision("continue", diff, None, None, None, **common,
                            reason="every outcome so far is identical within each arm: no variance "
                                   "estimate yet, so no interval and no decision")
        lo, hi = (float(x) for x in self._lr.conf_int[1])
        effect = float(self._lr.beta[1])
        p = float(self._lr.p_value[1])
        level = f"{100 * (1 - self.alpha):g}%"
        what = "accuracy" if self.metric == "accuracy" else "minus log-loss"
        stats = (f"{what} effect {_fmt(effect)} ({level} anytime-valid CI {_fmt(lo)}..{_fmt(hi)}, "
                 f"p={p:.3g}) after {n_c} control / {n_t} treatment labels")
        if not (math.isfinite(lo) and lo > 0) and not (math.isfinite(hi) and hi < 0):
            return Decision("continue", effect, lo, hi, p, **common,
                            reason=f"not decided yet: the interval contains 0; {stats}")
        if lo > 0:
            return Decision("promote", effect, lo, hi, p, **common,
                            reason=f"treatment is better: {stats}")
        return Decision("rollback", effect, lo, hi, p, **common,
                        reason=f"treatment is worse: {stats}")
