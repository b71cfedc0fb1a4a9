"""The MLflow container's entrypoint in compose and Kubernetes: the local stack's auth set-up
(``stack/services.py``), so a deployed MLflow is authenticated exactly as ``up``'s is.

``serve ARGS...``: writes the basic-auth app's config (the admin, ``default_permission =
READ``, the user store) with ``write_mlflow_auth_config`` to a file of mode 0600 under /tmp,
puts its path and the CSRF key in the environment and becomes ``python -m mlflow server
ARGS...``. The admin's password comes from ``TAXI_MLFLOW_ADMIN_PASSWORD`` (a Secret / the
compose ``.env``) and never shows on a command line.

``users``: waits for the server, then makes (or resets) the read-only user through MLflow's
API as ``up`` does (``ensure_mlflow_reader``); idempotent, the one-shot job's command.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from taxi_mlops import security
from taxi_mlops.manifests.common import MLFLOW_AUTH_APP
from taxi_mlops.settings import Settings



def auth_config_path() -> Path:
    """Under /tmp: the container's only writable place besides the state volume, and
    gone with the container (the password is not left on the volume)."""
    return Path(tempfile.gettempdir()) / "mlflow-auth" / "basic_auth.ini"


def serve_env(settings: Settings, config: Path) -> dict[str, str]:
    """The auth config written, and the variables MLflow's auth app reads it and its CSRF
    key from (the key: generated once into the state volume, shared by every worker)."""
    from taxi_mlops.stack.services import write_mlflow_auth_config

    write_mlflow_auth_config(settings, config)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": security.mlflow_flask_secret_key(settings)}


def serve(settings: Settings, args: list[str]) -> None:
    if " ".join(MLFLOW_AUTH_APP) not in " ".join(args):
        raise SystemExit("mlflow_server serve: pass --app-name basic-auth (an MLflow without it "
                         "accepts anyone); see src/taxi_mlops/manifests")
    os.environ.update(serve_env(settings, auth_config_path()))
    if "--expose-prometheus" in args:  # prometheus_client's multiprocess dir must exist
        Path(args[args.index("--expose-prometheus") + 1]).mkdir(parents=True, exist_ok=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server", *args])


def users(settings: Settings) -> int:
    from taxi_mlops.stack.process import http_ok, wait_for
    from taxi_mlops.stack.services import ensure_mlflow_reader

    health = f"{settings.mlflow_tracking_uri}/health"
    if not wait_for(lambda: http_ok(health), settings.startup_timeout_s, interval_s=2.0):
        print(f"MLflow did not answer at {health} within {settings.startup_timeout_s:g} s "
              "(TAXI_STARTUP_TIMEOUT_S); the job retries", file=sys.stderr)
        return 1
    ensure_mlflow_reader(settings)
    print(f"MLflow read-only user '{settings.mlflow_reader_username}' is set up")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("serve", "users"):
        print("usage: python -m taxi_mlops.manifests.mlflow_server serve MLFLOW-SERVER-ARGS... | users",
              file=sys.stderr)
        return 2
    settings = Settings()
    if argv[0] == "serve":
        serve(settings, argv[1:])
        return 0  # not reached: exec
    return users(settings)


if __name__ == "__main__":
    raise SystemExit(main())
