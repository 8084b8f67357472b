#!/usr/bin/env bash
# Installs the real peers the interop tests and benchmarks talk to, from Debian's packages.
# Needs root and apt-get; elsewhere it says what is missing and the interop tests skip
# (unless CI=true, where they fail instead).
set -euo pipefail
# swaks needs Net::SSLeay for --tls, Authen::SASL for some mechanisms and Digest::HMAC_MD5 for
# CRAM-MD5: Debian only recommends them, and recommends are not installed here.
# gcc, libc6-dev and libssl-dev: bench/auth.py compiles its load client (bench/authload.c).
pkgs=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl libdigest-hmac-perl sasl2-bin
      libsasl2-modules msmtp testssl.sh openssl postgresql dovecot-core gcc libc6-dev libssl-dev)
cmds=(postfix swaks saslauthd msmtp testssl openssl smtp-source pg_ctlcluster doveadm cc)
missing=0
for c in "${cmds[@]}"; do command -v "$c" >/dev/null 2>&1 || missing=1; done
[ -x /usr/sbin/postfix ] || missing=1
[ -f /usr/include/stdio.h ] && [ -f /usr/include/openssl/ssl.h ] || missing=1
perl -MNet::SSLeay -MIO::Socket::SSL -MAuthen::SASL -MDigest::HMAC_MD5 -e 1 2>/dev/null || missing=1
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-peers: not root or no apt-get; interop peers missing: ${pkgs[*]}" >&2
    exit 0
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
