"""The closed loop (issue 8): alert -> fresh data version -> retrain -> challenger -> experiment.

``guard`` keeps retraining rare and single (SQLite, survives restarts), ``data`` cuts a new
DVC data version from the labelled trips on Kafka, ``loop`` runs the whole chain and is the
alert receiver's hook (``loop.on_alert``). ``python -m taxi_mlops.retrain`` runs it once.
"""
