"""The calibration plot (PNG) from the ``calibration.json`` the MlflowLogger writes.

Drawn on the platform side: the TFX environment has no matplotlib, the platform's does. The
MlflowLogger runs ``python -m taxi_mlops.pipeline.calibration_plot IN.json OUT.png`` with the
platform's Python, as the FeastPusher runs Feast. Reliability curves (mean label against mean
predicted probability, ``slicing.ECE_BINS`` equal-width bins) of the overall slice and of the
payment-type and company-known slices with enough trips, over a histogram of predictions.
"""

from __future__ import annotations

import json
import sys

from taxi_mlops.pipeline import quality, slicing

PLOTTED_FAMILIES = ("payment_type", slicing.COMPANY_KNOWN)


def plotted(calibration: dict) -> list[str]:
    names = [slicing.OVERALL]
    for name, entry in sorted(calibration["slices"].items()):
        if (name.split("=")[0] in PLOTTED_FAMILIES
                and entry.get("examples", 0) >= quality.MIN_SLICE_EXAMPLES):
            names.append(name)
    return [n for n in names if n in calibration["slices"]]


def draw(calibration: dict, out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, hist) = plt.subplots(2, 1, figsize=(7, 8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name in plotted(calibration):
        entry = calibration["slices"][name]
        points = [(b["prediction_sum"] / b["examples"], b["label_sum"] / b["examples"])
                  for b in entry["bins"] if b["examples"]]
        ece = entry.get("expected_calibration_error")
        label = f"{name} (n={int(entry['examples'])}" + (f", ECE={ece:.3f})" if ece is not None else ")")
        curve.plot(*zip(*points), marker="o", label=label)
    curve.set_ylabel("fraction of big tippers")
    curve.set_title(f"Calibration ({calibration.get('model', 'candidate')}, eval split)")
    curve.legend(fontsize=8, loc="upper left")
    overall = calibration["slices"][slicing.OVERALL]["bins"]
    hist.bar([(b["lower"] + b["upper"]) / 2 for b in overall], [b["examples"] for b in overall],
             width=1.0 / len(overall), edgecolor="black", color="tab:blue")
    hist.set_xlabel("predicted tip probability")
    hist.set_ylabel("trips")
    hist.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        draw(json.load(f), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
