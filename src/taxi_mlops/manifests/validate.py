"""Offline validation of the generated manifests.

Core resources: ``kubernetes-validate`` (the Kubernetes OpenAPI schemas it bundles, strict:
an unknown field fails). Custom resources: the JSON Schemas in ``deploy/schemas/`` (vendored from the workplace's ``shared/deploy-schemas``)
made from the upstream CRDs (KServe, Strimzi, Feast; unknown fields fail). The Prometheus
Operator's kinds have no schema there: a strict schema of the fields we use stands in.
Compose: the Compose Specification schema that ``check-jsonschema`` bundles.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema

from taxi_mlops import paths

KUBERNETES_VERSION = "1.32.0"
SCHEMAS_DIR = paths.PROJECT_ROOT / "deploy" / "schemas"  # vendored from shared/deploy-schemas (README there)
CUSTOM_GROUPS = ("serving.kserve.io", "kafka.strimzi.io", "feast.dev", "monitoring.coreos.com")


class InvalidManifest(ValueError):
    pass


def _strict(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                              "labels": _STR_MAP, "annotations": _STR_MAP}}
_RULE = _strict({"alert": {"type": "string"}, "record": {"type": "string"}, "expr": {"type": "string"},
                 "for": {"type": "string"}, "keep_firing_for": {"type": "string"}, "labels": _STR_MAP,
                 "annotations": _STR_MAP}, ["expr"])
_SECRET_KEY = _strict({"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
                      ["name", "key"])
# The Prometheus Operator fields we use (monitoring.coreos.com/v1), strict like the CRD schemas.
MONITORING_SCHEMAS = {
    "PrometheusRule": _strict({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
                               "metadata": _METADATA,
                               "spec": _strict({"groups": {"type": "array", "items": _strict(
                                   {"name": {"type": "string"}, "interval": {"type": "string"},
                                    "rules": {"type": "array", "items": _RULE}}, ["name", "rules"])}}, ["groups"])},
                              ["apiVersion", "kind", "metadata", "spec"]),
    "ServiceMonitor": _strict({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
                               "metadata": _METADATA,
                               "spec": _strict({"jobLabel": {"type": "string"},
                                                "selector": {"type": "object"},
                                                "endpoints": {"type": "array", "items": _strict(
                                                    {"port": {"type": "string"}, "path": {"type": "string"},
                                                     "interval": {"type": "string"},
                                                     "honorLabels": {"type": "boolean"},
                                                     "basicAuth": _strict({"username": _SECRET_KEY,
                                                                           "password": _SECRET_KEY},
                                                                          ["username", "password"]),
                                                     "relabelings": {"type": "array", "items": _strict(
                                                         {"sourceLabels": {"type": "array"},
                                                          "targetLabel": {"type": "string"}})}})}},
                                               ["selector", "endpoints"])},
                              ["apiVersion", "kind", "metadata", "spec"]),
}


def is_custom(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS


@lru_cache(maxsize=None)
def custom_schema(kind: str, api_version: str) -> dict:
    group, version = api_version.split("/")
    if group == "monitoring.coreos.com":
        return MONITORING_SCHEMAS[kind]
    path = SCHEMAS_DIR / f"{kind.lower()}-{group}-{version}.json"
    if not path.exists():
        raise InvalidManifest(f"{kind} {api_version}: no schema {path.name} in {SCHEMAS_DIR}")
    return json.loads(path.read_text())


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def validate_doc(doc: dict, kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Raise ``InvalidManifest`` naming the resource and the field when ``doc`` is not valid."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if is_custom(doc):
        errors = _errors(custom_schema(doc["kind"], doc["apiVersion"]), doc)
    else:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError

        try:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
            errors = []
        except ValidationError as exc:
            errors = [f"{'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
        except SchemaNotFoundError as exc:
            raise InvalidManifest(f"{name}: no Kubernetes schema for {doc.get('apiVersion')} {doc.get('kind')}") from exc
        except VersionNotSupportedError as exc:
            raise InvalidManifest(f"{name}: kubernetes-validate has no schema for {kubernetes_version}") from exc
    if errors:
        raise InvalidManifest(f"{name}: " + "; ".join(errors))


@lru_cache(maxsize=1)
def compose_schema() -> dict:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def validate_compose(doc: dict) -> None:
    """The Compose Specification schema, then what it cannot say: images pinned by a tag that
    is not ``latest``, ports published on 127.0.0.1 only, a healthcheck on every long-running
    service, ``depends_on`` naming existing services."""
    errors = _errors(compose_schema(), doc)
    services = doc.get("services", {})
    for name, svc in services.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            errors.append(f"services.{name}.image: {image!r} is not pinned by a version tag")
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                errors.append(f"services.{name}.ports: {port!r} is not bound to 127.0.0.1")
        one_shot = "profiles" in svc or svc.get("restart") is None
        if not one_shot and "healthcheck" not in svc:
            errors.append(f"services.{name}: no healthcheck")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                errors.append(f"services.{name}.depends_on: no service {dep!r}")
    if errors:
        raise InvalidManifest("compose: " + "; ".join(errors))


def load_all(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]
