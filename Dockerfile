# strangler container image: `strangler serve` as a non-root user, state_dir on a volume.
#   docker build -t strangler .
#   docker run -p 8080:8080 -v "$PWD/routes.yaml:/etc/strangler/routes.yaml:ro" strangler
# The Helm chart (helm/strangler) mounts routes.yaml at /etc/strangler and a writable volume at
# state_dir (/var/lib/strangler), and runs the root filesystem read-only.
# Its Python is the one `make test` also runs the fast tier on (make test-image-python), and
# its dependencies are exactly uv.lock's (uv sync --locked), as for `make test` and CI.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# The same uv as the Makefile's UV_VERSION (tests/test_packaging.py checks they agree).
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/strangler
# gcc: setup.py compiles the data plane's hot modules with Cython (issue 29); only this stage
# has it. Without it the build would warn and install the pure-Python data plane.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && pip install "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first (a layer that changes only with uv.lock), then strangler itself, not
# editable: /src stays in this stage. Wheels only (aiohttp, httptools, uvloop are manylinux).
COPY pyproject.toml uv.lock README.md LICENSE setup.py ./
RUN uv sync --locked --no-dev --no-install-project --python /usr/local/bin/python
COPY proxy/ proxy/
COPY shadow/ shadow/
RUN uv sync --locked --no-dev --no-editable --python /usr/local/bin/python \
    && /opt/strangler/bin/strangler --version \
    && /opt/strangler/bin/python -c "import proxy.dataplane as d; assert d.PURE_REASON is None, d.describe()"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="strangler" \
      org.opencontainers.image.description="Strangler-fig migration proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
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
