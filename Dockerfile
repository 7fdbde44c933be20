# checkpoint-sidecar: the sidecar process (`checkpoint-sidecar serve`), and a base for agent
# images (the library is installed in /opt/venv, on PATH).
#
#   docker build -t registry.example.com/checkpoint-sidecar:0.1.0 .
#   docker push registry.example.com/checkpoint-sidecar:0.1.0
#
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (deploy/kubernetes/deployment.yaml).
# The entry point is exec form, so nothing runs through a shell at run time.
# checkov:skip=CKV_DOCKER_2:health is checked by the orchestrator's probes on /healthz and /readyz

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# [server]: uvicorn, the OpenTelemetry SDK and PyYAML (serve, alerts). Add `embedded` for
# `serve --embedded`, `dashboards` for `checkpoint-sidecar dashboards`.
ARG EXTRAS=server
RUN /opt/venv/bin/pip install --no-compile "/src[${EXTRAS}]" \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user (Kubernetes' runAsNonRoot can verify a number, not a name).
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["checkpoint-sidecar"]
CMD ["serve", "--host", "0.0.0.0"]
