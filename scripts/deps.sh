#!/usr/bin/env bash
# Install the system packages mirrorkv needs to build and test, when they are missing:
# clang + libclang (RocksDB's bindings are generated with bindgen), protoc (the etcd client of
# `mirrorkv-bench` compiles etcd's protobuf definitions), libfaketime (the `clock` nemesis
# of jepsen-lite runs nodes with skewed clocks), curl and python3 (scripts).
# Idempotent and quiet when everything is there.
set -euo pipefail

missing=()
dpkg -s clang >/dev/null 2>&1 || missing+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
dpkg -s libfaketime >/dev/null 2>&1 || missing+=(libfaketime)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "deps.sh: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
