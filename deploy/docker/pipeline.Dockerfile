# The TFX pipeline (TFX 1.16 needs Python 3.10): its own image, from requirements/pipeline.lock.
# Built from the repository root: docker build -f deploy/docker/pipeline.Dockerfile -t taxi-mlops-pipeline:0.1.0 .
# The platform's Python (3.11) beside TFX's: FeastPusher and the MlflowLogger's calibration plot
# run the platform's code with it (`python -m taxi_mlops.features.store push`), as a local run
# does with the platform venv. Taken from the official image of the same Debian release, so its
# shared libraries are the ones this image has; the KFP steps name it by
# TAXI_KFP_PLATFORM_PYTHON (/opt/platform/bin/python).
FROM python:3.11.11-slim-bookworm AS platform-python

FROM python:3.10.16-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

RUN python -m pip install "pip==24.3.1" "wheel==0.45.1"
COPY requirements/pipeline.lock requirements/pipeline.lock
# --no-deps: the lock is complete; letting the resolver loose on tfx's tree stalls for minutes.
RUN python -m pip install --no-deps -r requirements/pipeline.lock

COPY --from=platform-python /usr/local/bin/python3.11 /usr/local/bin/python3.11
COPY --from=platform-python /usr/local/lib/python3.11 /usr/local/lib/python3.11
COPY --from=platform-python /usr/local/lib/libpython3.11.so.1.0 /usr/local/lib/libpython3.11.so.1.0
COPY requirements/platform.lock requirements/platform.lock
RUN ldconfig && python3.11 -m venv /opt/platform \
 && /opt/platform/bin/python -m pip install "pip==24.3.1" "wheel==0.45.1" \
 && /opt/platform/bin/python -m pip install --no-deps -r requirements/platform.lock

# Both interpreters import our sources from PYTHONPATH, as the launcher runs them locally.
COPY src src
COPY data data
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/taxi taxi \
 && mkdir -p /var/lib/taxi && chown taxi:taxi /var/lib/taxi
USER 10001:10001
ENV PYTHONPATH=/app/src TAXI_STATE_DIR=/var/lib/taxi
# Argument: the PipelineConfig JSON that taxi_mlops.pipeline.launcher writes into the state dir.
ENTRYPOINT ["python", "-m", "taxi_mlops.pipeline.run"]
