#!/usr/bin/env bash
# Makes sure Debian's redis-server is installed; the tests start their own servers on free 127.0.0.1 ports
# (tests/conftest.py: the `redis_server` fixture), so nothing stays running after CI.
set -euo pipefail
command -v redis-server >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
else
  sudo -n sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server' >/dev/null
fi
# Debian starts a system-wide server on 6379 when it installs the package; the tests need none of it.
(command -v systemctl >/dev/null && systemctl stop redis-server 2>/dev/null) || service redis-server stop 2>/dev/null || true
