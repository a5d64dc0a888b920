# syntax=docker/dockerfile:1
#
# Two images from one file (BuildKit; docker compose builds both, see docker-compose.yml and deploy/DEPLOY.md):
#
#   docker build --target agent -t orch-agent .   # orch-agent: runc, rsync, btrfs-progs; runs as root
#   docker build --target orch  -t orch .         # orch CLI, `orch worker`, Flower; runs as user orch
#
# Both install the same wheel of this repository, built once in the `wheels` stage.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- wheels: orch and every Python dependency (Flower is one: `orch flower`) ---------------------
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# only what the package needs (pyproject's readme is README.md; hostagent ships api/*.yaml)
COPY pyproject.toml README.md ./
COPY orchapi/ orchapi/
COPY hostagent/ hostagent/
COPY orchestrator/ orchestrator/
RUN pip wheel --wheel-dir /wheels .

# ---- base: Python, tini as PID 1 (forwards signals, reaps orphans) --------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# ---- agent: one host agent; must run as root and --privileged (runc, user namespaces, chown of ------
# ---- rootfs trees, btrfs subvolumes) ---------------------------------------------------------------
FROM base AS agent
# runc: the container runtime; rsync, tar, gzip: transfers and images; btrfs-progs: subvolumes and
# send/receive when the data dir is on btrfs; busybox-static: build-busybox-image's test image;
# coreutils (cp, stat) and util-linux are in the base image already; procps for ps/top when debugging.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        runc rsync tar gzip btrfs-progs busybox-static util-linux procps \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels orch
COPY --chmod=0755 scripts/build-busybox-image /usr/local/bin/build-busybox-image
# cgroup v2 nesting, as Docker's own dind image does it: the container's processes leave the root of
# their cgroup namespace for /init, so that controllers (memory, cpu, pids) can be enabled for the
# cgroups runc creates (the agent reads a container's memory.current). Only when the container has a
# private cgroup namespace on a pure v2 host (/proc/self/cgroup is exactly "0::/"); otherwise (v1, or
# --cgroupns=host, where moving processes would touch the host) it does nothing. Then runs "$@".
COPY --chmod=0755 <<'EOF' /usr/local/bin/orch-agent-entrypoint
#!/bin/sh
set -eu
if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ "$(cat /proc/self/cgroup)" = "0::/" ]; then
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
        >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
fi
exec "$@"
EOF
ENV ORCH_AGENT_DIR=/var/lib/orch-agent \
    ORCH_AGENT_SOCKET=/var/lib/orch-agent/unix.socket
# containers' rootfs trees must not live on the image's overlayfs: always a volume
VOLUME ["/var/lib/orch-agent"]
# 8443: the HTTPS API; 8444: the data port the migrations this agent sends stream their bytes over
EXPOSE 8443 8444
ENTRYPOINT ["tini", "--", "orch-agent-entrypoint"]
# 0.0.0.0, not [::]: the agent binds "::" IPv6-only (asyncio), and Docker networks are IPv4 by default
CMD ["orch-agent", "--data-dir", "/var/lib/orch-agent", "--listen", "0.0.0.0:8443"]

# ---- orch: the CLI, `orch worker` (default command) and Flower; unprivileged ------------------------
FROM base AS orch
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels orch
# The client configuration (config.yml, client.crt/key, servercerts/) lives in $XDG_CONFIG_HOME/orch;
# /config is made here, owned by orch and 0700, so a named volume mounted on it starts out that way.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/orch \
        --shell /usr/sbin/nologin orch \
    && install -d -o orch -g orch -m 0700 /config
ENV XDG_CONFIG_HOME=/config
USER orch
WORKDIR /home/orch
EXPOSE 5555
# no orch-specific entrypoint: `docker compose run --rm worker orch remote add ...` runs any command
ENTRYPOINT ["tini", "--"]
CMD ["orch", "worker"]
