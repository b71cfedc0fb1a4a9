"""TEST-ONLY MLflow Model: the champion's SavedModel with its probability inverted (1 - p).

A deliberately bad, yet real, registered version (logged "from code" like the production
pyfunc, loaded and served by the real model server) so rollout tests can pit a clearly better
model against a clearly worse one on a real replay. Never registered outside tests.
"""

import mlflow
import numpy as np

# Importing it sets the production model; the set_model below replaces it (the last one wins).
from taxi_mlops.registry.pyfunc_model import TaxiTipPyfunc


class InvertedTaxiTipPyfunc(TaxiTipPyfunc):
    def predict_columns(self, columns: dict) -> np.ndarray:
        return (1.0 - super().predict_columns(columns)).astype(np.float32)


mlflow.models.set_model(InvertedTaxiTipPyfunc())
