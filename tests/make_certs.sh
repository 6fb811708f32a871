#!/usr/bin/env bash
# make_certs.sh DIR: the certificates the TLS tests use, made afresh with the
# openssl command into DIR (never committed). EC P-256 keys: fast to make.
#
#   ca.crt ca.key             the cluster's test CA
#   node.crt node.key         a node: CN kvs-node, SAN localhost, 127.0.0.1, ::1
#                             (server and client use: routers and workers)
#   node2.crt node2.key       a second node identity: CN kvs-node-b, same SANs
#   alice.crt alice.key       a client: CN alice, SAN email alice@example.com
#   bob.crt bob.key           a client: CN bob
#   expired.crt expired.key   CN alice, signed by the CA, valid only in 2020
#   wrong.crt wrong.key       CN alice, signed by another CA (other-ca.crt)
#   other-ca.crt other-ca.key that other CA
#   server-wrongname.crt/.key a server certificate for otherhost.example only
#   serveronly.crt .key       CN alice, signed by the CA, for serverAuth only
#                             (extendedKeyUsage): no client certificate
set -euo pipefail

dir=${1:?usage: make_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # ca NAME CN
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$1.crt" 2>/dev/null
}

# leaf NAME CN CA SAN-or-empty [DAYS [EKU]]
leaf() {
    local name=$1 cn=$2 ca=$3 san=$4 days=${5:-3650} eku=${6:-serverAuth,clientAuth}
    key "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$eku"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

ca ca "kvs test CA"
ca other-ca "some other CA"
leaf node kvs-node ca "DNS:localhost,IP:127.0.0.1,IP:::1"
leaf node2 kvs-node-b ca "DNS:localhost,IP:127.0.0.1,IP:::1"
leaf alice alice ca "email:alice@example.com"
leaf bob bob ca ""
leaf wrong alice other-ca ""
leaf server-wrongname kvs-node ca "DNS:otherhost.example"
leaf serveronly alice ca "" 3650 serverAuth

# An expired certificate: `openssl x509 -req` cannot backdate, `openssl ca` can.
key expired.key
openssl req -new -key expired.key -subj "/CN=alice" -out expired.csr 2>/dev/null
mkdir -p ca.db
: >ca.db/index.txt
echo 1000 >ca.db/serial
cat >ca.db/ca.cnf <<EOF
[ ca ]
default_ca = test
[ test ]
database = $PWD/ca.db/index.txt
new_certs_dir = $PWD/ca.db
serial = $PWD/ca.db/serial
default_md = sha256
policy = any
unique_subject = no
[ any ]
commonName = supplied
[ leaf ]
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth,clientAuth
EOF
openssl ca -batch -config ca.db/ca.cnf -cert ca.crt -keyfile ca.key -extensions leaf \
    -startdate 20200101000000Z -enddate 20200201000000Z -notext \
    -in expired.csr -out expired.crt 2>/dev/null
rm -rf ca.db expired.csr ./*.srl
chmod 600 ./*.key
