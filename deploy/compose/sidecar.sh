#!/bin/sh
# The sidecar container's entrypoint: `remora proxy` (or `remora $REMORA_COMMAND`: the
# ingress gateway runs `gateway`) with the join token of its service account (minted by the
# `tokens` service) in REMORA_TOKEN, so it never shows in `ps`.
set -eu
token_file="/var/run/remora-tokens/$SERVICE_ACCOUNT"
if [ ! -s "$token_file" ]; then
  echo "sidecar: no join token at $token_file (did the tokens service run?)" >&2
  exit 1
fi
REMORA_TOKEN="$(cat "$token_file")"
export REMORA_TOKEN
exec remora "${REMORA_COMMAND:-proxy}" "$@"
