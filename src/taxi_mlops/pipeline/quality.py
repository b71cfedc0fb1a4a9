"""The bar a model must clear to be blessed (shared by the Evaluator config, the SliceGate
and the tests)."""

MIN_ACCURACY = 0.70
MIN_AUC = 0.85
MAX_REGRESSION = 0.01  # a challenger may be at most this much worse than the champion

# Per-slice bar (SliceGate): every slice big enough to measure AUC on (at least
# MIN_SLICE_EXAMPLES trips and MIN_SLICE_CLASS_EXAMPLES of each class) needs AUC >= MIN_SLICE_AUC.
# Issue 9 asked for 0.75; the data does not allow it. Within the Credit Card slice (cash trips
# never record a tip, so the overall AUC of 0.95 is mostly cash vs card) our model reaches
# 0.631, and a gradient-boosted model fitted to card trips alone reaches 0.645 held out
# (0.626-0.667 over 5 splits, bench/slice_ceiling.py). A bar above that ceiling would bless no
# model; 0.60 still withdraws the blessing of a model that stops ranking within a big slice.
MIN_SLICE_AUC = 0.60
MIN_SLICE_EXAMPLES = 200
MIN_SLICE_CLASS_EXAMPLES = 20
