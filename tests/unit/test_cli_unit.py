"""Pure helpers of the CLI's output."""

from __future__ import annotations

from taxi_mlops.cli import _model_label


def test_the_model_column_names_the_alias_or_else_the_experiment_arm():
    assert _model_label({"version": "1", "alias": "champion", "variant": "champion"}) == "v1@champion"
    # an experiment routes to version numbers: the arm is what the reader wants, not "@None"
    assert _model_label({"version": "2", "alias": None, "variant": "treatment"}) == "v2 (treatment)"
    assert _model_label({"version": "3", "alias": None, "variant": None}) == "v3"
