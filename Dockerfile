# The user code, and the Dagster webserver and daemon, as one image (docker-compose.yml runs
# it three times with different commands). Nothing in the project needs Docker: this is for
# people who deploy with it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/dagster/app
COPY pyproject.toml README.md ./
COPY enrollment_pipeline ./enrollment_pipeline
# The k8s extra (dagster-k8s): on Kubernetes the runs run in pods of this image and load the
# chart's instance, whose run launcher is K8sRunLauncher (deploy/helm/).
RUN pip install ".[k8s]" && useradd --create-home --uid 1000 dagster

# The production profile: PostgreSQL storage (DAGSTER_PG_URL), pools, run monitoring, retries.
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/
RUN mkdir -p /data/archive && chown -R dagster /opt/dagster /data/archive
USER dagster

EXPOSE 4000 3000
CMD ["dagster", "api", "grpc", "-m", "enrollment_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
