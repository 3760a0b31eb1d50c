#!/usr/bin/env bash
# Writes a few small seed inputs for the `entry_decode` target into
# corpus/entry_decode/ (ignored by git: the fuzzer grows and rewrites it).
#
# Each seed is the *contents* of an entry frame, without the "TCE\x01" tag
# and the CRC-32: the target also decodes every input wrapped in a valid
# frame, so these reach the parser directly and no checksum has to be
# computed here. The layout follows `Entry::encode` in src/entry/codec.rs.
set -euo pipefail

out="$(dirname "$0")/corpus/entry_decode"
mkdir -p "$out"

# Big-endian integers and u32-length-prefixed strings (ASCII only).
u8() { printf "$(printf '\\%03o' "$(($1 & 255))")"; }
u16() { u8 $(($1 >> 8)); u8 "$1"; }
u32() { u16 $(($1 >> 16)); u16 "$1"; }
str() { u32 ${#1}; printf '%s' "$1"; }

# 200, HTTP/1.1, no headers, empty body, no trailers.
{ u16 200; u8 2; u32 0; str ""; u8 0; } >"$out/minimal"

# A gRPC-like answer: HTTP/2, a header, a body and a trailer.
{
  u16 200; u8 3
  u32 1; str content-type; str application/grpc
  u32 7; u8 0; u32 2; printf hi  # one gRPC message frame holding "hi"
  u8 1; u32 1; str grpc-status; str 0
} >"$out/grpc"

# A repeated name split by another one, and an upper-case name: the decoder
# normalises both, so the round trip starts from a different byte form.
{
  u16 404; u8 1
  u32 4; str x-a; str 1; str x-b; str 2; str x-a; str 3; str X-Up; str v
  str "not found"
  u8 1; u32 0
} >"$out/normalised"

ls -l "$out"
