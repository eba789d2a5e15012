# Slim image running rag-gateway as a non-root user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY middleware ./middleware
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1
# /data/journal (settlements waiting for Redis) and /data/files (uploads), as deploy/gateway.yaml
# sets them: a volume mounted there starts out owned by the gateway user, the folder being in the image.
RUN useradd --create-home --uid 10001 gateway && mkdir -p /data/journal /data/files && chown -R gateway /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The embedded defaults keep their vector store under ./.data: the workdir must be writable.
RUN chown gateway /app
COPY --chown=gateway policies ./policies
COPY --chown=gateway samples ./samples
USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
# --host 0.0.0.0: inside a container the port is published by the runtime.
CMD ["rag-gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
