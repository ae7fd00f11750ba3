# rotator container image: `rotator daemon` by default, `rotator rotate` for a CronJob.
#
#   docker build -t rotator:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp rotator:0.1.0 demo
#   docker run --rm --read-only --tmpfs /tmp -p 9464:9464 \
#       -v "$PWD/config.toml:/etc/rotator/config.toml:ro" -e QUIVA_API_KEY rotator:0.1.0
#
# No configuration and no credential is baked in: the config file is mounted at
# /etc/rotator/config.toml (or named by ROTATOR_CONFIG) and credentials arrive at run time
# (environment, mounted files, IRSA, Vault Kubernetes auth). See docs/operations.md.
#
# The base is pinned by tag. Pin it by digest too (python:3.11-slim-bookworm@sha256:...) once
# you can resolve the digest against your registry; it could not be verified where this file
# was written (no registry reachable), so no digest is shown rather than an unchecked one.
# PYTHON_IMAGE may name any Debian-like image with python3 >= 3.11, venv and pip
# (deploy/smoke/ builds one locally with debootstrap).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels for rotator and every dependency, installed into a venv -----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/rotator \
    PATH="/opt/rotator/bin:${PATH}"

RUN python3 -m venv /opt/rotator

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rotator/ rotator/
COPY providers/ providers/

# Wheels for rotator and every dependency, then the venv installed from those wheels alone
# (--no-index): it holds exactly what was built here. Extras: aws (boto3), vault (hvac),
# daemon (APScheduler, prometheus-client). pip and setuptools leave the venv afterwards (nothing
# installs at run time), and bytecode is compiled now, since the runtime's root filesystem is
# read-only.
# DL3013 (pin versions in pip) is ignored on purpose: the one `pip install` installs the wheel
# of this source tree, whose version is pyproject.toml's, from /wheels only; dependency versions
# follow pyproject.toml's ranges when the wheels are built. For byte-for-byte reproducible
# images, add a constraints file to the build context and set PIP_CONSTRAINT.
# hadolint ignore=DL3013
RUN pip wheel --wheel-dir /wheels ".[aws,vault,daemon]" \
 && pip install --no-index --find-links /wheels "rotator[aws,vault,daemon]" \
 && pip uninstall --yes --quiet pip setuptools \
 && python -m compileall -q /opt/rotator/lib

# --- runtime: the venv on a clean base, as an unprivileged numeric user ----------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="rotator" \
      org.opencontainers.image.description="Rotates API keys before they expire and keeps every secret store in sync." \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric UID/GID so Kubernetes can check runAsNonRoot without a passwd lookup. No home
# directory and no login shell: nothing is written outside mounted paths.
RUN groupadd --system --gid 10001 rotator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rotator

COPY --from=build /opt/rotator /opt/rotator

# Read-only root filesystem: bytecode is precompiled above and never written at run time;
# HOME and TMPDIR point at /tmp, the one path a pod mounts writable (an emptyDir) for the
# few libraries that want a scratch directory (`rotator demo` keeps its files there).
# ROTATOR_DAEMON__HTTP_ADDRESS: inside a container /healthz, /readyz and /metrics must listen on
# every interface, not loopback. An environment variable beats the config file, so change the
# address with this variable (or `daemon --http-address`), not with [daemon] http_address.
ENV PATH="/opt/rotator/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    ROTATOR_CONFIG=/etc/rotator/config.toml \
    ROTATOR_DAEMON__HTTP_ADDRESS=0.0.0.0:9464

USER 10001:10001
WORKDIR /tmp
EXPOSE 9464

# No init process: rotator runs as PID 1. The daemon and `rotate` install SIGTERM/SIGINT handlers
# (PID 1 gets no other signals) and stop at a step boundary within [daemon] shutdown_timeout. The
# only child processes are exec hooks; what a hook leaves running is re-parented to PID 1 when it
# exits, and rotator reaps it (rotator.hooks: never a hook it still waits for), so no zombies pile up.
ENTRYPOINT ["rotator"]
CMD ["daemon"]
