"""Pure functions that turn API answers into what a page shows: chart frames, the lineage
graph, the alias history. No Streamlit and no HTTP here, so they are unit-tested alone."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

import pandas as pd

from taxi_mlops.ui.clients import Series, tags_of


def frame(series: Iterable[Series], label: str | tuple[str, ...], name: str = "value") -> pd.DataFrame:
    """Range-query series as one frame: a UTC time index, one column per value of ``label``
    (several labels are joined with "/"); ``name`` when the series has no such label."""
    labels = (label,) if isinstance(label, str) else label
    columns = {}
    for s in series:
        key = "/".join(s.labels.get(lbl, "") for lbl in labels if s.labels.get(lbl)) or name
        index = pd.to_datetime([t for t, _ in s.points], unit="s", utc=True)
        columns[key] = pd.Series([v for _, v in s.points], index=index, dtype=float)
    if not columns:
        return pd.DataFrame()
    df = pd.DataFrame(columns).sort_index()
    df.index.name = "time"
    return df[sorted(df.columns)]


def last_value(series: list[Series]) -> float | None:
    """The newest point of the first series (None when there is none)."""
    return series[0].points[-1][1] if series and series[0].points else None


# ---- lineage ---------------------------------------------------------------------------------
def _q(text) -> str:
    """A DOT string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _short(text, n: int = 40) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _html(text) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def by_id(artifact: dict):
    """ML Metadata ids grow as the pipeline runs: sorted by id is (about) pipeline order."""
    try:
        return (0, int(artifact.get("id")))
    except (TypeError, ValueError):
        return (1, str(artifact.get("id")))


def _pipeline_label(pipeline: dict) -> str:
    """The pipeline run as one node: a small table of its artifacts (type, id, producer)."""
    rows = "".join(
        f"<tr><td align='left'>{_html(a.get('type', 'artifact'))} #{_html(a.get('id'))}</td>"
        f"<td align='left'>{_html(str(a.get('produced_by') or '').rsplit('.', 1)[-1])}</td></tr>"
        for a in sorted(pipeline.get("artifacts") or [], key=by_id))
    head = f"<tr><td colspan='2'><b>pipeline run</b><br/>{_html(_short(pipeline.get('run_id') or '', 28))}</td></tr>"
    return f"<<table border='0' cellborder='0' cellspacing='0' cellpadding='2'>{head}{rows}</table>>"


def lineage_dot(lineage: dict) -> str:
    """The chain of one prediction as Graphviz DOT, left to right:
    data version -> pipeline run (its artifacts) -> model version -> prediction -> label."""
    nodes = []

    def node(key: str, label: str, color: str, shape: str = "box", html: bool = False) -> str:
        text = label if html else _q(label)
        nodes.append(f"{_q(key)} [label={text}, shape={shape}, style=\"rounded,filled\", "
                     f"fillcolor={_q(color)}];")
        return key

    data = lineage.get("data") or {}
    model = lineage.get("model") or {}
    prediction = lineage.get("prediction") or {}
    pipeline = lineage.get("pipeline") or {}
    label = lineage.get("label")
    chain = []
    if data.get("dvc_data_version"):
        chain.append(node("data", f"data version (DVC)\n{_short(data['dvc_data_version'], 16)}\n"
                                  f"{_short(data.get('path') or '', 32)}", "#dbeafe", "cylinder"))
    if pipeline.get("artifacts"):
        chain.append(node("pipeline", _pipeline_label(pipeline), "#fef3c7", html=True))
    if model.get("version"):
        aliases = ", ".join(model.get("aliases") or []) or "no alias"
        chain.append(node("model", f"model v{model['version']}\n{model.get('family') or ''} ({aliases})",
                          "#dcfce7"))
    prob = prediction.get("tip_probability")
    pred_label = f"prediction\n{_short(lineage.get('request_id', ''), 20)}"
    if isinstance(prob, (int, float)):
        pred_label += f"\np={prob:.3f} ({prediction.get('variant') or '-'})"
    chain.append(node("prediction", pred_label, "#ede9fe", "ellipse"))
    if label:
        outcome = "big tipper" if label.get("big_tipper") else "not a big tipper"
        correct = label.get("correct")
        verdict = "" if correct is None else (", model right" if correct else ", model wrong")
        chain.append(node("label", f"label\n{outcome}{verdict}", "#fce7f3", "ellipse"))
    else:
        chain.append(node("label", "label\nnot joined yet", "#f3f4f6", "ellipse"))
    edges = [f"{_q(a)} -> {_q(b)};" for a, b in zip(chain, chain[1:])]
    return "digraph lineage {\nrankdir=LR;\nnode [fontname=Helvetica, fontsize=11];\n" + \
        "\n".join(nodes + edges) + "\n}"


# ---- models ----------------------------------------------------------------------------------
def _ms(value) -> str:
    try:
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return ""


def versions_table(versions: list[dict]) -> pd.DataFrame:
    """One row per registered version: aliases, family, data version, evaluation figures."""
    rows = []
    for v in versions:
        tags = tags_of(v)
        rows.append({"version": int(v["version"]), "aliases": ", ".join(v.get("aliases") or []),
                     "family": tags.get("model_family", ""),
                     "eval accuracy": _num(tags.get("eval_binary_accuracy")),
                     "eval AUC": _num(tags.get("eval_auc")),
                     "Brier": _num(tags.get("eval_brier_score")),
                     "ECE": _num(tags.get("eval_expected_calibration_error")),
                     "data version": tags.get("dvc_data_version", ""),
                     "last decision": tags.get("rollout.decision", ""),
                     "registered": _ms(v.get("creation_timestamp")), "run_id": v.get("run_id", "")})
    return pd.DataFrame(rows)


def _num(value) -> float | None:
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def alias_history(versions: list[dict]) -> pd.DataFrame:
    """Alias moves as the registry records them, newest first: each version's registration
    (the first becomes champion, later ones challenger) and the rollout decision its
    ``rollout.*`` tags hold (promoted, demoted, rolled back, restored, retired)."""
    rows = []
    for v in versions:
        tags = tags_of(v)
        rows.append({"when": _ms(v.get("creation_timestamp")), "version": int(v["version"]),
                     "event": "registered", "aliases moved": "", "actor": "pipeline",
                     "reason": tags.get("retrain.reason", "")})
        decision = tags.get("rollout.decision")
        if decision:
            moved = {"promoted": f"champion -> v{v['version']} (was v{tags.get('rollout.replaced') or '-'})",
                     "demoted": f"v{v['version']} -> previous (champion: v{tags.get('rollout.replaced_by')})",
                     "restored": f"champion -> v{v['version']} "
                                 f"(rolled back from v{tags.get('rollout.replaced') or '-'})",
                     "rolled_back": f"removed: {tags.get('rollout.removed_aliases') or 'champion'}",
                     "retired": f"removed: {tags.get('rollout.removed_aliases', '')}"}.get(decision, "")
            when = tags.get("rollout.decided_at", "")
            try:
                when = datetime.fromisoformat(when).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            except ValueError:
                pass
            rows.append({"when": when, "version": int(v["version"]), "event": decision,
                         "aliases moved": moved, "actor": tags.get("rollout.actor", ""),
                         "reason": tags.get("rollout.reason", "")})
    df = pd.DataFrame(rows)
    return df.sort_values("when", ascending=False, kind="stable").reset_index(drop=True) if rows else df


def slices_table(slice_doc: dict) -> pd.DataFrame:
    """``evaluation/slice_metrics.json`` of a run: one row per slice, with the gate's verdict."""
    table = slice_doc.get("slices") or {}
    gate = slice_doc.get("slice_gate") or {}
    checked, failed = set(gate.get("checked", [])), set(gate.get("failed", []))
    rows = []
    for name in sorted(table, key=lambda n: (n.lower() != "overall", n)):
        row = table[name] or {}
        rows.append({"slice": name, "trips": row.get("example_count"), "AUC": _num(row.get("auc")),
                     "accuracy": _num(row.get("binary_accuracy")), "Brier": _num(row.get("brier_score")),
                     "ECE": _num(row.get("expected_calibration_error")),
                     "gate": ("fail" if name in failed else "pass") if name in checked else "-"})
    return pd.DataFrame(rows)
