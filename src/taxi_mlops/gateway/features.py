"""Online feature lookup for one trip, through the Feast SDK on the platform's repo."""

from __future__ import annotations

from taxi_mlops.features import schema, store
from taxi_mlops.settings import Settings
from taxi_mlops.streaming import features as realtime

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

    def lookup(self, area: int, company: str) -> tuple[dict[str, float], list[str]]:
        """Store features for the entities, and the names that fell back to defaults."""
        row = self._store.get_online_features(
            features=self._refs,
            entity_rows=[{schema.AREA_KEY: area, schema.COMPANY_KEY: company}],
        ).to_dict()
        values, defaulted = {}, []
        for name, default in DEFAULTS.items():
            value = row.get(name, [None])[0]
            if value is None:
                defaulted.append(name)
                value = default
            values[name] = float(value)
        return values, defaulted

    def ping(self) -> bool:
        self._store.get_online_features(
            features=self._refs,
            entity_rows=[{schema.AREA_KEY: schema.MISSING_AREA, schema.COMPANY_KEY: schema.MISSING_COMPANY}],
        )
        return True
