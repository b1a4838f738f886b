#!/usr/bin/env bash
# Makes a test certificate authority and certificates with openssl (Debian's
# `openssl`), for trying TLS and mutual TLS:
#   scripts/make-certs.sh DIR [SERVER_NAMES]
# DIR gets ca.pem/ca.key (the CA), server.pem/server.key (signed by the CA,
# for SERVER_NAMES: default "localhost,127.0.0.1"), client.pem/client.key
# (signed by the CA, for mutual TLS) and rogue-ca.pem with rogue-client.pem/.key
# (another CA and a client certificate it signed: what a server must refuse).
# Keys are EC P-256; certificates last 30 days. Not for production: use your
# own CA or a certificate manager there.
set -euo pipefail
dir="${1:?usage: $0 DIR [SERVER_NAMES]}"
names="${2:-localhost,127.0.0.1}"
mkdir -p "$dir"
cd "$dir"

san=""
IFS=',' read -ra parts <<< "$names"
for n in "${parts[@]}"; do
  if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san="${san%,}"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # ca NAME SUBJECT
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -days 30 -subj "/CN=$2" -out "$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {  # leaf NAME CA SUBJECT EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "attention test CA"
ca rogue-ca "rogue test CA"
leaf server ca "${parts[0]}" "subjectAltName=$san
extendedKeyUsage=serverAuth"
leaf client ca "attention test client" "extendedKeyUsage=clientAuth"
leaf rogue-client rogue-ca "rogue client" "extendedKeyUsage=clientAuth"
rm -f ./*.srl
chmod 600 ./*.key
echo "certificates in $dir: ca.pem, server.pem/.key ($san), client.pem/.key, rogue-ca.pem, rogue-client.pem/.key"
