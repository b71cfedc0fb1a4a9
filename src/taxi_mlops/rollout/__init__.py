"""Rollout core (issue 7): experiments, an always-valid sequential test, registry decisions.

- ``experiment``: what an experiment is (``ExperimentSpec``) and what is stored (``Experiment``).
- ``sequential``: the anytime-valid test that decides promote / rollback / continue.
- ``store``: SQLite shared by gateway workers, the label join and the CLI.
- ``actions``: registry moves, each recorded as MLflow tags and a ``ModelEvent``.
- ``tracker``: feeds joined labels to the test and acts on its decision.
"""
