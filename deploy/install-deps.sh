#!/usr/bin/env bash
# Installs exactly what kvs needs to build, run and test on Debian 12.
#   deploy/install-deps.sh            build dependencies
#   deploy/install-deps.sh --test     build and test dependencies
#   deploy/install-deps.sh --runtime  only what the built binaries need to run
#                                     (the container image's last stage)
# Idempotent: packages already present are skipped, so a second run does
# nothing but check. Needs root (or sudo) only when something is missing.
set -euo pipefail

# Build toolchain and the libraries kvs links against (libedit: kvs-cli's
# line editor; libsystemd: the router's readiness notification; libssl: TLS;
# libxxhash: table digests and snapshot checksums; libhttp-parser: the
# metrics listener).
build_pkgs=(build-essential cmake pkg-config
            libuv1-dev libprotobuf-c-dev protobuf-c-compiler
            liblmdb-dev librdkafka-dev libyaml-dev libedit-dev libsystemd-dev libssl-dev
            libxxhash-dev libhttp-parser-dev)
# Test-only tools: a second protobuf implementation (python3-protobuf + protoc)
# proves any client can speak kvs; kcat and confluent-kafka cross-check
# ingestion; clang's runtime gives the sanitizer build; tmux gives kvs-cli's
# line editor a real terminal; systemd's systemd-analyze checks the unit
# file and python3-yaml reads the compose file; the openssl command makes
# the TLS tests' certificates and is an independent TLS client; prometheus
# brings promtool, which checks the /metrics text; redis-server (7.0 on
# Debian 12) is the reference test_resp_diff.py compares kvs's Redis
# protocol with, byte for byte (it runs its own on a free port); logrotate
# checks deploy/kvs.logrotate.
test_pkgs=(python3 python3-protobuf protobuf-compiler kcat redis-tools redis-server python3-redis
           python3-confluent-kafka lmdb-utils tmux systemd python3-yaml openssl prometheus
           logrotate)

# The shared libraries kvs-router, kvs-node and kvs-cli link against (libc6
# aside), by Debian 12 package name; test_deploy.py checks this list
# against the binaries. Plus ca-certificates: librdkafka verifies a TLS
# broker against the system's CAs when kafka.properties names no
# ssl.ca.location, and debian:12-slim has none (a broker with a public
# CA's certificate would fail verification in the container image).
runtime_pkgs=(libuv1 libprotobuf-c1 liblmdb0 librdkafka1 libyaml-0-2 libedit2
              libsystemd0 libssl3 libxxhash0 libhttp-parser2.9 ca-certificates)

case "${1:-}" in
"") want=("${build_pkgs[@]}") ;;
--test) want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
--runtime) want=("${runtime_pkgs[@]}") ;;
*) echo "usage: $0 [--test | --runtime]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    # A fresh Debian 12 may have no sudo: say what to do rather than
    # "sudo: command not found".
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: not root and sudo is missing; as root, run:" >&2
        echo "  apt-get update && apt-get install --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
