"""Online feature lookup for one trip, through the Feast SDK on the platform's repo."""

from __future__ import annotations

from taxi_mlops.features import schema, store
from taxi_mlops.settings import Settings
from taxi_mlops.features import realtime

DEFAULTS = {**schema.STORE_DEFAULTS, **realtime.REALTIME_DEFAULTS}


class FeatureLookup:
    """Batch features (the model's feature service) and the stream processor's realtime ones,
    read in one online call."""

    def __init__(self, settings: Settings):
        self._store = store.feature_store(settings)
        service = self._store.get_feature_service(schema.FEATURE_SERVICE)
        self._refs = [f"{proj.name}:{f.name}" for proj in service.feature_view_projections
                      for f in proj.features]
        self._refs += [f"{realtime.REALTIME_VIEW}:{name}" for name in realtime.REALTIME_FEATURES]

    def lookup_many(self, keys: list[tuple[int, str]]) -> list[tuple[dict[str, float], list[str]]]:
        """Store features for each (area, company) pair, and the names that fell back to
        defaults, in one online read (one pair for /predict, up to 1,000 for a batch).

        The prior rows (``schema.PRIOR_*`` keys) are read in the same call: an entity the
        store lacks gets the prior, exactly as a training trip of an entity's first day does
        (``tables.point_in_time_join``); zeros only if the prior itself is missing."""
        rows = self._store.get_online_features(
            features=self._refs,
            entity_rows=[{schema.AREA_KEY: a, schema.COMPANY_KEY: c} for a, c in keys]
            + [{schema.AREA_KEY: schema.PRIOR_AREA, schema.COMPANY_KEY: schema.PRIOR_COMPANY}],
        ).to_dict()
        prior_at = len(keys)
        out = []
        for i in range(len(keys)):
            values, defaulted = {}, []
            for name, default in DEFAULTS.items():
                column = rows.get(name) or [None] * (prior_at + 1)
                value = column[i]
                if value is None:
                    defaulted.append(name)
                    prior = column[prior_at] if name in schema.STORE_FEATURES else None
                    value = prior if prior is not None else default
                values[name] = float(value)
            out.append((values, defaulted))
        return out

    def ping(self) -> bool:
        self._store.get_online_features(
            features=self._refs,
            entity_rows=[{schema.AREA_KEY: schema.MISSING_AREA, schema.COMPANY_KEY: schema.MISSING_COMPANY}],
        )
        return True
