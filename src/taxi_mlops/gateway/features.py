"""Online feature lookup for one trip, through the Feast SDK on the platform's repo."""

from __future__ import annotations

from taxi_mlops.features import schema, store
from taxi_mlops.settings import Settings


class FeatureLookup:
    def __init__(self, settings: Settings):
        self._store = store.feature_store(settings)
        self._service = self._store.get_feature_service(schema.FEATURE_SERVICE)

    def lookup(self, area: int, company: str) -> tuple[dict[str, float], list[str]]:
        """Store features for the entities, and the names that fell back to defaults."""
        row = self._store.get_online_features(
            features=self._service,
            entity_rows=[{schema.AREA_KEY: area, schema.COMPANY_KEY: company}],
        ).to_dict()
        values, defaulted = {}, []
        for name in schema.STORE_FEATURES:
            value = row.get(name, [None])[0]
            if value is None:
                defaulted.append(name)
                value = schema.STORE_DEFAULTS[name]
            values[name] = float(value)
        return values, defaulted

    def ping(self) -> bool:
        self._store.get_online_features(
            features=self._service,
            entity_rows=[{schema.AREA_KEY: schema.MISSING_AREA, schema.COMPANY_KEY: schema.MISSING_COMPANY}],
        )
        return True
