# The waypost image: the control plane (`waypost serve`), and the demo echo backend
# (`python -m waypost.demo.echo`) that compose.yaml runs from the same image.
# Envoy is not in it: Envoy runs from the official envoyproxy/envoy image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the policy version shown is the commit when /policies is a checkout, and
# `serve --git-pull` pulls it. The checkout is usually a volume owned by another uid; it is this
# container's only repository, so git may trust it (else git refuses: "dubious ownership").
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
ENV GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=*

WORKDIR /app
# Only what the package needs, so edits to tests or docs do not invalidate this layer.
COPY pyproject.toml requirements.lock ./
COPY src ./src
RUN pip install --require-hashes --no-deps -r requirements.lock && pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home waypost

# A control plane needs no privileges; policies are mounted read-only.
USER waypost
EXPOSE 18000 9902
ENTRYPOINT ["waypost"]
# Every interface, explicitly (the default is loopback): the admin port then needs
# WAYPOST_ADMIN_TOKEN (or --admin-token-file / --admin-ca), and decision ports --decision-allow.
CMD ["serve", "--policies", "/policies", "--host", "0.0.0.0"]
