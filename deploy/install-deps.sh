#!/usr/bin/env bash
# Installs exactly what kvs needs to build, run and test on Debian 12.
# Idempotent: packages already present are skipped, so a second run does
# nothing but check. Needs root (or sudo) only when something is missing.
set -euo pipefail

# Build toolchain and the six libraries kvs links against.
build_pkgs=(build-essential cmake pkg-config
            libuv1-dev libprotobuf-c-dev protobuf-c-compiler
            liblmdb-dev librdkafka-dev libyaml-dev libssl-dev)
# Test-only tools: a second protobuf implementation (python3-protobuf + protoc)
# proves any client can speak kvs; kcat and confluent-kafka cross-check
# ingestion; clang's runtime gives the sanitizer build; the openssl command
# makes the TLS tests' certificates and is an independent TLS client.
test_pkgs=(python3 python3-protobuf protobuf-compiler kcat
           python3-confluent-kafka lmdb-utils openssl)

want=("${build_pkgs[@]}")
if [ "${1:-}" = "--test" ]; then
    want+=("${test_pkgs[@]}")
fi

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
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
