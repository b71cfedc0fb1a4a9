#!/usr/bin/env bash
# Installs whatever is missing for the platform, idempotently, showing each step:
# Debian packages, the platform venv (.venv, Python 3.11), the TFX venv (Python 3.10), the data.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # tests: MLflow on PostgreSQL
command -v prometheus >/dev/null || need+=(prometheus)            # with promtool
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)  # with amtool
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)                # tests: the UI in a real browser
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  step "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q || { echo "apt-get update failed: check your network or run as root"; exit 1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi

# --- platform environment (Python 3.11) ------------------------------------------------
PY311=${PYTHON311:-}
if [ -z "$PY311" ]; then
  for c in python3.11 "$HOME/.pyenv/versions/"3.11.*/bin/python3.11; do
    if command -v "$c" >/dev/null 2>&1 || [ -x "$c" ]; then PY311=$c; break; fi
  done
fi
[ -n "$PY311" ] || { echo "Python 3.11 not found: install it (pyenv install 3.11) or set PYTHON311"; exit 1; }
LOCK_SUM=$(sha256sum requirements/platform.lock | cut -c1-12)
if [ ! -f .venv/.complete ] || [ "$(cat .venv/.complete)" != "$LOCK_SUM" ]; then
  step "creating the platform environment (.venv, $("$PY311" --version)) from requirements/platform.lock"
  rm -rf .venv
  "$PY311" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==24.3.1" wheel
  .venv/bin/python -m pip install --disable-pip-version-check --no-deps -r requirements/platform.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$LOCK_SUM" > .venv/.complete
else
  step "platform environment up to date (.venv)"
fi

# --- pipeline environment (Python 3.10, TFX 1.16) --------------------------------------
step "TFX pipeline environment"
.venv/bin/python -m taxi_mlops.pipeline_env

# --- data -------------------------------------------------------------------------------
if [ ! -f data/chicago_taxi/data.csv ]; then
  step "fetching the data from the DVC remote (dvc pull)"
  .venv/bin/dvc pull -q data/chicago_taxi/data.csv.dvc
fi
step "ready"
