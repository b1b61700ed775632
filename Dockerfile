# The aiops image: `docker run IMAGE detect` runs the detector service on :9109.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    AIOPS_DATABASE_URL=sqlite:////app/var/aiops.db
WORKDIR /app
COPY pyproject.toml README.md ./
COPY detector/ detector/
COPY demo/ demo/
COPY training/ training/
COPY feature_store/ feature_store/
COPY runbooks/ runbooks/
COPY sql/ sql/
RUN pip install . && useradd --system --uid 10001 aiops && mkdir -p /app/var && chown aiops /app/var
USER aiops
EXPOSE 9109
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9109/livez').status == 200 else 1)"
ENTRYPOINT ["aiops"]
CMD ["detect"]
