"""The bar a model must clear to be blessed (shared by the Evaluator config and the tests)."""

MIN_ACCURACY = 0.70
MIN_AUC = 0.85
MAX_REGRESSION = 0.01  # a challenger may be at most this much worse than the champion
