# Our Python services (gateway, model server, stream workers, UI, MLflow server): one image.
# Built from the repository root: docker build -f deploy/docker/platform.Dockerfile -t taxi-mlops-platform:0.1.0 .
# The base image is pinned by version; packages come from the lock, installed with --no-deps as
# `make install` does (the lock is complete, versions exact).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

RUN python -m pip install "pip==24.3.1" "wheel==0.45.1"
COPY requirements/platform.lock requirements/platform.lock
RUN python -m pip install --no-deps -r requirements/platform.lock

COPY pyproject.toml README.md ./
COPY src src
COPY deploy deploy
RUN python -m pip install --no-deps --no-build-isolation -e . \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/taxi taxi \
 && mkdir -p /var/lib/taxi && chown taxi:taxi /var/lib/taxi

USER 10001:10001
ENV TAXI_HOST=0.0.0.0 TAXI_STATE_DIR=/var/lib/taxi
EXPOSE 8000 8080 8090 8501 5050
CMD ["python", "-m", "taxi_mlops.gateway"]
