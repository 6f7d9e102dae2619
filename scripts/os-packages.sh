#!/usr/bin/env bash
# Installs the OS packages the project needs when they are missing: OpenLDAP client tools
# (ldapsearch, a real client in the tests), the OpenLDAP server (slapd plays the upstream
# directory that person binds are verified against), the libldap/libsasl headers python-ldap
# builds against, HAProxy (the balancer of the replicas test, deploy/haproxy.cfg), and the
# PostgreSQL server binaries the tests start a throwaway cluster from, and Chromium with its
# driver (the admin console's tests drive a real headless browser).
set -euo pipefail
missing=()
command -v ldapsearch >/dev/null || missing+=(ldap-utils)
command -v slapd >/dev/null || [ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -e /usr/include/ldap.h ] || missing+=(libldap2-dev)
[ -e /usr/include/sasl/sasl.h ] || missing+=(libsasl2-dev)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing OS packages: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${missing[@]}" >/dev/null
