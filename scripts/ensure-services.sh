#!/usr/bin/env bash
# Make sure the servers the test suite starts for itself can be started here.
# Tests run their own redis-server on a free loopback port (never a shared one), so all this
# needs is the binary. Where it is missing and we are root with apt-get, install Debian's.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's redis-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server not found and cannot be installed here (needs root and apt-get);" \
         "the Redis tests will fail under CI=true and skip otherwise" >&2
  fi
fi
