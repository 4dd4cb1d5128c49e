#!/bin/sh
# One-shot: a join token per service account of the demo mesh, from the control server's
# `remora token create`, written where the sidecars read them (the `tokens` volume).
# Runs as root only to hand each file to uid 1337 (the sidecars) with mode 0400, and to read
# the control server's admin token ($ADMIN_TOKEN_FILE, mode 0600 in its state volume).
set -eu
dir=/var/run/remora-tokens
for sa in $SERVICE_ACCOUNTS; do
  remora token create --control "$CONTROL" --admin-token-file "$ADMIN_TOKEN_FILE" \
      --namespace default --service-account "$sa" --ttl 720h > "$dir/.$sa.tmp"   # stdout: the token alone
  chown 1337:1337 "$dir/.$sa.tmp"
  chmod 0400 "$dir/.$sa.tmp"
  mv "$dir/.$sa.tmp" "$dir/$sa"
  echo "token for default/$sa written to $dir/$sa"
done
