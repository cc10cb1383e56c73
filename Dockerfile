# syntax=docker/dockerfile:1
# Stage 1: build the wheel (compiles the Cython hot path).
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY meshproxy ./meshproxy
COPY control ./control
RUN pip install --no-cache-dir build \
    && python -m build --wheel --outdir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/meshproxy-*.whl

# Stage 2: a slim runtime with only the wheel and its dependencies.
FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels meshproxy \
    && rm -rf /wheels \
    && useradd --uid 1337 --no-create-home --shell /usr/sbin/nologin istio-proxy
# 1337 is the uid Istio's sidecar runs as (iptables redirection excludes it).
USER 1337
# outbound, inbound, admin, prometheus, status
EXPOSE 15001 15006 15000 15090 15021
ENTRYPOINT ["meshproxy"]
CMD ["run", "--config", "/etc/meshproxy"]
