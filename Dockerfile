# strangler container image: `strangler serve` as a non-root user, state_dir on a volume.
#   docker build -t strangler:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/routes.yaml:/etc/strangler/routes.yaml:ro" strangler:0.1.0
# The Helm chart (helm/strangler) mounts routes.yaml at /etc/strangler and a writable volume at
# state_dir (/var/lib/strangler), and runs the root filesystem read-only.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/strangler
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
COPY shadow/ shadow/
# Dependencies come as wheels (aiohttp, httptools, uvloop are manylinux): no compiler needed.
RUN /opt/strangler/bin/pip install . \
    && /opt/strangler/bin/strangler --version

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="strangler" \
      org.opencontainers.image.description="Strangler-fig migration proxy"
RUN groupadd --system --gid 10001 strangler \
    && useradd --system --uid 10001 --gid strangler --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin strangler \
    && mkdir -p /etc/strangler /var/lib/strangler \
    && chown strangler:strangler /var/lib/strangler
COPY --from=build /opt/strangler /opt/strangler
ENV PATH=/opt/strangler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/strangler
VOLUME ["/var/lib/strangler"]
# proxy (routes.yaml `listen`), admin API + /metrics + probes (`admin.listen`)
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["strangler", "serve"]
CMD ["-c", "/etc/strangler/routes.yaml"]
