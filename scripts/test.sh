#!/usr/bin/env bash
# The test command of the README: installs what the integration tests need on
# a fresh machine (only what is missing), then runs every test of every feature
# (unit, integration and doc tests).
#
# Services the broker tests talk to (RabbitMQ, NATS, Redis, Mosquitto) are
# expected to run already; tests skip without them unless
# TOWER_MESH_REQUIRE_SERVICES=1, which makes them fail instead. The servers
# the tests start themselves (etcd, the Kafka broker tansu) are installed here
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_py_modules() { "${PYTHON:-python3}" -c "import $1" >/dev/null 2>&1; }
apt_install() {
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -q "$@" >/dev/null || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
  else
    echo "note: cannot install $* (no apt-get); the tests that need it will skip" >&2
  fi
}

# SOAP interop test: a spyne (Python) SOAP server.
if command -v "${PYTHON:-python3}" >/dev/null 2>&1 && ! have_py_modules "spyne, lxml"; then
  echo "== installing spyne and lxml (SOAP interop test)"
  "${PYTHON:-python3}" -m pip install --quiet spyne lxml || echo "note: pip install spyne lxml failed; the SOAP interop test will skip" >&2
fi

# Discovery etcd test: a real etcd, started by the test on loopback.
if ! command -v "${TOWER_MESH_ETCD_BIN:-etcd}" >/dev/null 2>&1; then
  echo "== installing etcd-server (discovery etcd test)"
  apt_install etcd-server
fi

# Kafka publisher tests: a real Kafka-protocol broker (tansu, a Rust binary),
# started by the tests on loopback. Built from source once and kept in cargo's
# bin directory; TOWER_MESH_TANSU_BIN names another binary.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ -z "${TOWER_MESH_TANSU_BIN:-}" ] && [ ! -x "$cargo_bin/tansu" ] && ! command -v tansu >/dev/null 2>&1; then
  echo "== installing tansu 0.6.0 (Kafka publisher tests): cargo install tansu --locked --features dynostore"
  echo "   note: built from source once, about 12 minutes on 2 cores; later runs use $cargo_bin/tansu"
  cargo install tansu --version 0.6.0 --locked --features dynostore --quiet \
    || echo "note: installing tansu failed; the Kafka tests against it will skip" >&2
fi

echo "== cargo test --all-features"
exec cargo test --all-features --no-fail-fast "$@"
