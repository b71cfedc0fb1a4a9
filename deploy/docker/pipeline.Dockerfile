# The TFX pipeline (TFX 1.16 needs Python 3.10): its own image, from requirements/pipeline.lock.
# Built from the repository root: docker build -f deploy/docker/pipeline.Dockerfile -t taxi-mlops-pipeline:0.1.0 .
FROM python:3.10.16-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

RUN python -m pip install "pip==24.3.1" "wheel==0.45.1"
COPY requirements/pipeline.lock requirements/pipeline.lock
# --no-deps: the lock is complete; letting the resolver loose on tfx's tree stalls for minutes.
RUN python -m pip install --no-deps -r requirements/pipeline.lock

# The pipeline imports our sources from PYTHONPATH, as the launcher runs it locally.
COPY src src
COPY data data
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/taxi taxi \
 && mkdir -p /var/lib/taxi && chown taxi:taxi /var/lib/taxi
USER 10001:10001
ENV PYTHONPATH=/app/src TAXI_STATE_DIR=/var/lib/taxi
# Argument: the PipelineConfig JSON that taxi_mlops.pipeline.launcher writes into the state dir.
ENTRYPOINT ["python", "-m", "taxi_mlops.pipeline.run"]
