#!/usr/bin/env sh
# Make a mesh CA in Istio's cacerts layout with openssl: a root (kept offline) and an
# intermediate that the control server signs with. Usage: make-cacerts.sh [DIR] [TRUST_DOMAIN]
#   DIR/root-cert.pem, DIR/root-key.pem   the root; keep root-key.pem out of the cluster
#   DIR/ca-cert.pem, DIR/ca-key.pem       the intermediate the control server uses
#   DIR/cert-chain.pem                    intermediate + root (what sidecars are sent)
# Then (printed at the end): kubectl -n remora-system create secret generic cacerts --from-file=...
set -eu
dir=${1:-cacerts}
trust_domain=${2:-cluster.local}
mkdir -p "$dir"
cd "$dir"
umask 077

cat > root.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
O = Remora
CN = Remora Root CA
[ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
subjectAltName = URI:spiffe://$trust_domain
CNF
cat > ca.cnf <<CNF
[ext]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = URI:spiffe://$trust_domain
CNF

openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem
openssl req -new -x509 -key root-key.pem -sha256 -days 3650 -config root.cnf -out root-cert.pem
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -new -key ca-key.pem -subj "/O=Remora/CN=Remora Intermediate CA" -out ca.csr
openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -sha256 \
  -days 730 -extfile ca.cnf -extensions ext -out ca-cert.pem 2>/dev/null
cat ca-cert.pem root-cert.pem > cert-chain.pem
rm -f root.cnf ca.cnf ca.csr root-cert.srl
chmod 600 ./*-key.pem

echo "made $dir/{ca-cert,ca-key,root-cert,cert-chain}.pem for spiffe://$trust_domain; load them with:"
echo "  kubectl -n remora-system create secret generic cacerts --from-file=$dir/ca-cert.pem" \
     "--from-file=$dir/ca-key.pem --from-file=$dir/root-cert.pem --from-file=$dir/cert-chain.pem"
