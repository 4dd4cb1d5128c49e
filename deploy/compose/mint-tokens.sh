#!/bin/sh
# One-shot: a join token per service account of the demo mesh, from the control server's
# `remora token create`, written where the sidecars read them (the `tokens` volume).
# Runs as root only to hand each file to uid 1337 (the sidecars) with mode 0400, and to read
# the control server's admin token ($ADMIN_TOKEN_FILE, mode 0600 in its state volume).
set -eu
dir=/var/run/remora-tokens
# An entry is a service account of namespace default, or NAMESPACE/SERVICE-ACCOUNT (the
# ingress gateway's is istio-system/istio-ingressgateway-service-account); the file is named
# after the service account.
for entry in $SERVICE_ACCOUNTS; do
  case "$entry" in
    */*) ns="${entry%%/*}"; sa="${entry#*/}" ;;
    *) ns=default; sa="$entry" ;;
  esac
  remora token create --control "$CONTROL" --admin-token-file "$ADMIN_TOKEN_FILE" \
      --namespace "$ns" --service-account "$sa" --ttl 720h > "$dir/.$sa.tmp"   # stdout: the token alone
  chown 1337:1337 "$dir/.$sa.tmp"
  chmod 0400 "$dir/.$sa.tmp"
  mv "$dir/.$sa.tmp" "$dir/$sa"
  echo "token for $ns/$sa written to $dir/$sa"
done
