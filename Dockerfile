# syntax=docker/dockerfile:1
# The aiops image: one image for the detector, the trainer and the runbook webhook.
#
#   docker run IMAGE              # = aiops detect: the detector service, /metrics /healthz /livez on :9109
#   docker run IMAGE train        # the retrain job (one run, then exit)
#   docker run IMAGE migrate      # create or upgrade the database schema
#   docker run IMAGE webhook      # the runbook webhook on :8080 (/healthz, /metrics)
#
# The HEALTHCHECK below probes the detector's /livez on :9109. The webhook answers
# /healthz on :8080 instead: Docker Compose overrides the health check for it, and on
# Kubernetes the pod's probes replace the image's HEALTHCHECK (which Kubernetes ignores).

# -- builder: the project's wheel and the wheels of every runtime dependency -------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# compilers only for a dependency that ships no wheel for this platform; never in the runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aiops/ aiops/
COPY detector/ detector/
COPY training/ training/
COPY feature_store/ feature_store/
COPY runbooks/ runbooks/
COPY demo/ demo/
COPY sql/ sql/
# sql/migrations/*.sql are package data of the `sql` package ([tool.setuptools.package-data])
RUN pip wheel . -w /wheels

# -- runtime: the wheel and its runtime dependencies, nothing else ------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    AIOPS_DATABASE_URL=sqlite:////app/var/aiops.db

# no dev extras: only `aiops-detector` and what its [project.dependencies] pull in
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels aiops-detector \
    && groupadd --system --gid 10001 aiops \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home aiops \
    && mkdir -p /app/var \
    && chown 10001:10001 /app/var
# /app/var holds the SQLite default (AIOPS_DATABASE_URL): mount a volume, or an emptyDir
# under a read-only root filesystem; use PostgreSQL for more than one process

WORKDIR /app
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001
EXPOSE 9109 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9109/livez', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["aiops"]
CMD ["detect"]
