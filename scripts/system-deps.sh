#!/usr/bin/env bash
# Debian packages the test suite runs for real: redis-server (shared rate-limit counters) and
# chromium (dashboard page tests), prometheus (the analytics fleet view). `bench` adds wrk, the load generator of the benchmarks.
# Installs only what is missing; needs root (or sudo) and Debian's apt.
set -euo pipefail
want=(redis-server chromium prometheus)
[ "${1:-}" = "bench" ] && want+=(wrk)
need=()
for pkg in "${want[@]}"; do
  command -v "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
