#!/usr/bin/env bash
# Runs every check and test of tower-coalesce on a fresh machine: installs what
# is missing (rustfmt, clippy, redis-server), then fmt, clippy, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# The Redis tests start their own redis-server on a free loopback port; the
# `tls` feature builds against OpenSSL and its test makes a certificate with
# the openssl command.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The embedded backend alone, without the Redis client.
cargo clippy -p tower-coalesce --no-default-features --lib -- -D warnings
# Broken intra-doc links and undocumented items fail the docs as they would
# on docs.rs.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps
# The MSRV the workspace declares, proven with that toolchain (its own
# target directory: artifacts of two compilers do not mix).
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
rustup toolchain list | grep -q "^$msrv-" || rustup toolchain install "$msrv" --profile minimal
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --workspace --all-features --all-targets
# The checker keeps its proxies' logs of a history that breaks a promise,
# and prints them with the failure.
CHECKER_LOGS="${CHECKER_LOGS:-$PWD/target/checker-logs}" cargo test --workspace --all-features
# The proxy's release build, as its container image makes it.
bash proxy/deploy/build.sh
# With every feature the Redis client speaks TLS through rustls; this runs
# the TLS tests through native-tls too.
cargo test -p tower-coalesce --features tls-native --test redis_url
