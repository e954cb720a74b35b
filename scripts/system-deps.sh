#!/usr/bin/env bash
# Debian packages the test suite runs for real: redis-server (shared rate-limit counters),
# chromium (dashboard page tests), chromium-driver (the portal's Selenium browser test) and
# nodejs + npm (the portal's OIDC test starts the `oidc-provider` npm package, installed by the
# test from tests/oidc/package-lock.json), prometheus (the analytics fleet view). `bench` adds wrk, the load generator of the benchmarks.
# Installs only what is missing; needs root (or sudo) and Debian's apt.
set -euo pipefail
# package:command it provides
want=(redis-server:redis-server chromium:chromium chromium-driver:chromedriver nodejs:node npm:npm prometheus:prometheus)
[ "${1:-}" = "bench" ] && want+=(wrk:wrk)
need=()
for entry in "${want[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || need+=("${entry%%:*}")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
