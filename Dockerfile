# dicom-node image: one image for every role (scp, api, worker, serve); the role is the command.
#   docker build -t dicom-node:local .
#   docker run --rm --env-file .env dicom-node:local scp
# Runtime needs no compiler: every dependency ships a wheel (psycopg2-binary, numpy, argon2-cffi).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/dicom-node
WORKDIR /src
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY inference ./inference
COPY dicom_node ./dicom_node
COPY admin_api ./admin_api
RUN /opt/dicom-node/bin/pip install .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/dicom-node/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DICOM_NODE_DATA_DIR=/var/lib/dicom-node \
    DICOM_NODE_API_HOST=0.0.0.0
# A fixed, non-root uid/gid so a shared DATA_DIR volume has one owner across hosts.
RUN groupadd --system --gid 10001 dicom \
    && useradd --system --uid 10001 --gid dicom --home-dir /var/lib/dicom-node \
        --no-create-home --shell /usr/sbin/nologin dicom \
    && install -d -o dicom -g dicom -m 0750 /var/lib/dicom-node
COPY --from=build /opt/dicom-node /opt/dicom-node
USER 10001:10001
WORKDIR /var/lib/dicom-node
VOLUME ["/var/lib/dicom-node"]
# DICOM, admin API + /metrics (api, serve), /metrics of the scp and worker roles (METRICS_PORT).
EXPOSE 11112 8080 9108
# For the api and serve roles; docker-compose.yml gives scp and worker their own checks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
# The node finishes established associations on SIGTERM (SHUTDOWN_GRACE_SECONDS) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dicom-node"]
CMD ["serve"]
