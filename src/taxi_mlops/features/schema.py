"""The model's inputs, named once for training, the feature store and serving.

Pure Python on purpose: the TFX environment (Python 3.10), the trainer module, the model
server and the gateway all import it, so a feature cannot be spelled two ways.
"""

LABEL = "big_tipper"
TIP_THRESHOLD = 0.2  # big_tipper = tips > 20% of the fare (the TFX example's label)

# Raw trip fields the model reads, as the CSV and the gateway's request carry them.
FLOAT_FEATURES = [
    "trip_miles",
    "fare",
    "trip_seconds",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
]
INT_CATEGORICAL_FEATURES = {  # name -> number of values (0..n-1)
    "trip_start_hour": 24,
    "trip_start_day": 8,
    "trip_start_month": 13,
}
VOCAB_FEATURES = ["payment_type", "company", "pickup_community_area", "dropoff_community_area"]

# Entity keys in the feature store, and the features looked up for them.
AREA_KEY = "pickup_community_area"
COMPANY_KEY = "company"
AREA_FEATURES = ["area_trip_count", "area_avg_fare", "area_tip_rate"]
COMPANY_FEATURES = ["company_trip_count", "company_avg_fare", "company_tip_rate"]
STORE_FEATURES = AREA_FEATURES + COMPANY_FEATURES

FEATURE_SERVICE = "taxi_tip_model_v1"
AREA_VIEW = "area_trip_stats"
COMPANY_VIEW = "company_trip_stats"

# How a missing raw value is represented, identically in training and serving: an empty area
# becomes -1, an empty company "UNKNOWN", a missing number 0.
MISSING_AREA = -1
MISSING_COMPANY = "UNKNOWN"

# Entities with little or no history. Zeros would tell the model "this company's riders never
# tip" (it learned exactly that before), so an entity's averages are shrunk toward the global
# ones by PRIOR_STRENGTH pseudo-trips, and an entity never seen gets the global averages with a
# count of 0 (the count is the "how well known" signal). The global averages "as of" a moment
# are stored under these reserved keys, so the gateway reads the prior from the same store.
PRIOR_STRENGTH = 20.0
PRIOR_AREA = -999
PRIOR_COMPANY = "__PRIOR__"
# Only when not even the prior is known (before the first day of data, or an empty store).
STORE_DEFAULTS = {name: 0.0 for name in STORE_FEATURES}


def entity_features(prefix: str, n, fare_sum, big_sum, prior_fare, prior_rate) -> dict:
    """The one rule for an entity's store features, used by the feature tables (on columns)
    and, through the stored prior rows, by serving: ``n`` trips so far with ``fare_sum`` and
    ``big_sum`` big tippers, smoothed toward the global ``prior_fare`` / ``prior_rate``.
    With ``n == 0`` this is exactly the prior: what an unseen entity gets."""
    m = PRIOR_STRENGTH
    return {
        f"{prefix}_trip_count": n * 1.0,
        f"{prefix}_avg_fare": (fare_sum + m * prior_fare) / (n + m),
        f"{prefix}_tip_rate": (big_sum + m * prior_rate) / (n + m),
    }


def unseen_entity_features(prefix: str, prior_fare: float, prior_rate: float) -> dict:
    """What an entity with no history gets: the prior itself, with count 0."""
    return entity_features(prefix, 0, 0.0, 0.0, prior_fare, prior_rate)

# Dtypes of the serving signature (and of the v2 protocol's tensors).
SERVING_DTYPES = {
    **{name: "FP32" for name in FLOAT_FEATURES + STORE_FEATURES},
    **{name: "INT64" for name in INT_CATEGORICAL_FEATURES},
    "payment_type": "BYTES",
    "company": "BYTES",
    "pickup_community_area": "INT64",
    "dropoff_community_area": "INT64",
}
MODEL_INPUTS = list(SERVING_DTYPES)


def model_inputs(trip: dict, store_features: dict) -> dict:
    """One trip's raw fields plus its store features, gaps filled as ``tables.load_trips`` does."""
    out = {}
    for name in FLOAT_FEATURES:
        value = trip.get(name)
        out[name] = float(value) if value is not None else 0.0
    for name in INT_CATEGORICAL_FEATURES:
        out[name] = int(trip.get(name) or 0)
    for name in ("pickup_community_area", "dropoff_community_area"):
        value = trip.get(name)
        out[name] = int(value) if value is not None else MISSING_AREA
    out["company"] = trip.get("company") or MISSING_COMPANY
    out["payment_type"] = trip.get("payment_type") or "Unknown"
    for name in STORE_FEATURES:
        out[name] = float(store_features.get(name, STORE_DEFAULTS[name]))
    return out
