# syntax=docker/dockerfile:1
#
# One image for every process of pg-outbox-relay: both workers, the reference sidecar and
# the migration step, so it installs the extras of all of them: [chat] (redis, orjson),
# [document] (httpx), both with [worker] (prometheus-client), [sidecar] (fastapi,
# uvicorn, pypdf) and [dashboard] (starlette, uvicorn, jinja2); `outbox migrate` needs only
# the base install. The service is chosen by
# the command (all are console scripts on PATH):
#
#   outbox migrate --documents   one-shot: migrate the outbox and the reference documents
#                                tables, then exit (0 done, 3 PostgreSQL unreachable)
#   outbox-chat-worker           the chat worker -> Redis Pub/Sub (the default CMD)
#                                needs DATABASE_URL, REDIS_URL
#   outbox-document-worker       the document worker -> the sidecar
#                                needs DATABASE_URL, SIDECAR_BASE_URL, SIDECAR_TOKEN
#   outbox-sidecar               the reference preprocessing sidecar (FastAPI, port 8000)
#                                needs DATABASE_URL, SIDECAR_TOKEN, SIDECAR_HOST=0.0.0.0
#   outbox dashboard --host 0.0.0.0 --port 8080
#                                the operators' web dashboard; needs DATABASE_URL, and
#                                DASHBOARD_TOKEN to allow changes
#
#   docker build -t pg-outbox-relay .
#   docker run --rm -e DATABASE_URL=postgresql://app:secret@db:5432/app \
#       pg-outbox-relay outbox migrate --documents
#   docker run --init -e DATABASE_URL=... -e REDIS_URL=redis://redis:6379/0 \
#       -e METRICS_PORT=9000 pg-outbox-relay
#
# Run it with an init as PID 1 (`docker run --init`, compose `init: true`) so signals reach
# the process and the sidecar's extraction processes are reaped. SIGTERM stops every
# service cleanly (exit 0). docker-compose.dev.yml runs the whole stack from this file.
# Needs BuildKit (the default builder since Docker 23) for the wheel bind mount below.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project's wheel plus a wheel of every dependency of its extras -----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from. outbox/_migrations is a symlink to ../migrations, so the
# migrations folder must sit next to outbox/ here too.
COPY pyproject.toml README.md ./
COPY migrations/ migrations/
COPY outbox/ outbox/
COPY workers/ workers/
COPY sidecar/ sidecar/

RUN pip wheel --wheel-dir /wheels ".[chat,document,sidecar,dashboard]" \
    && ls /wheels/pg_outbox_relay-*.whl

# --- runtime: no sources, no build tools, no dev dependencies ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="pg-outbox-relay" \
      org.opencontainers.image.description="Transactional outbox for PostgreSQL: workers, reference sidecar, migrations" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Installed as root into the system site-packages (read-only for the app user); the wheels
# are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "pg-outbox-relay[chat,document,sidecar,dashboard]" \
    && groupadd --system --gid 10001 outbox \
    && useradd --system --uid 10001 --gid outbox --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin outbox \
    && python -c "from outbox.storage.migrate import migrations_dir as d; \
assert sorted((d() / 'versions').glob('*.py')) and sorted((d() / 'documents').glob('*.py'))" \
    && python -c "import workers.chat, workers.document, sidecar.app, outbox.dashboard.server"

WORKDIR /app
USER 10001:10001

# 8000: outbox-sidecar (SIDECAR_PORT); 8080: outbox dashboard; 9000: a worker's /metrics
# /healthz /readyz when METRICS_PORT=9000 (off unless set).
EXPOSE 8000 8080 9000

CMD ["outbox-chat-worker"]
