#!/usr/bin/env bash
# Make sure the servers the test suite starts for itself can be started here.
# Tests run their own redis-server and their own RabbitMQ node on free loopback ports (never a
# shared one), so all this needs is the binaries. Where one is missing and we are root with
# apt-get, install Debian's package; otherwise say so (under CI=true those tests then fail).
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ -z "${QENGINE_RABBITMQ_SBIN:-}" ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] \
   && ! command -v rabbitmq-server >/dev/null 2>&1; then
  missing+=(rabbitmq-server)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "not found: ${missing[*]}; installing Debian's packages" >&2
  apt-get update -qq
  # policy-rc.d 101: install the binaries without starting the packaged services
  # (the tests start private instances; the machine's own services are not ours to run).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.qengine
  chmod +x /usr/sbin/policy-rc.d.qengine
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    cp /usr/sbin/policy-rc.d.qengine /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  rm -f /usr/sbin/policy-rc.d.qengine
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "not found and cannot be installed here (needs root and apt-get): ${missing[*]};" \
       "those tests will fail under CI=true and skip otherwise" >&2
fi
