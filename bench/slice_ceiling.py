"""How well can anything rank tippers among Credit Card trips with the platform's features?

The SliceGate's per-slice AUC bar has to sit below what the data allows. This fits a
gradient-boosted model (scikit-learn's HistGradientBoostingClassifier) on Credit Card trips
only, with every model input plus the company as a category, and reports its held-out AUC:
a ceiling estimate for the Credit Card slice, to compare with the served model's slice AUC
(MLflow metric ``slice_payment_type_Credit_Card_auc``).

    .venv/bin/python bench/slice_ceiling.py
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from taxi_mlops.features import schema, tables
from taxi_mlops.settings import get_settings


def main() -> None:
    frame = tables.training_frame(tables.load_trips(get_settings().data_csv))
    card = frame[frame["payment_type"] == "Credit Card"].copy()
    card["company_code"] = card["company"].astype("category").cat.codes
    columns = (schema.FLOAT_FEATURES + schema.STORE_FEATURES + list(schema.INT_CATEGORICAL_FEATURES)
               + ["pickup_community_area", "dropoff_community_area", "company_code"])
    X, y = card[columns].to_numpy(), card[schema.LABEL].to_numpy()
    aucs = []
    for seed in range(5):
        train = np.random.RandomState(seed).rand(len(card)) < 0.67
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed)
        model.fit(X[train], y[train])
        aucs.append(roc_auc_score(y[~train], model.predict_proba(X[~train])[:, 1]))
    print(f"Credit Card trips: {len(card)}, big tippers {y.mean():.3f}")
    print(f"gradient-boosted model trained on card trips only, held-out AUC over 5 splits: "
          f"mean {np.mean(aucs):.3f}, min {np.min(aucs):.3f}, max {np.max(aucs):.3f}")


if __name__ == "__main__":
    main()
