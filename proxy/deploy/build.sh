#!/usr/bin/env bash
# The release build of coalesce-proxy: what the container image runs
# (Dockerfile) and what CI builds (scripts/test.sh), one command for both.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p coalesce-proxy
