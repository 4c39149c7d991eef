#!/usr/bin/env bash
# Debian packages the local stack and the tests use: redis-server (the ledger) and
# Postfix for its smtp-sink (load tests). Postfix is installed with the "No configuration"
# choice and no service is started: nothing listens until a test starts its own server.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${missing[*]}; install them (as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian"
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Keep package scripts from starting redis or postfix as services.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e $policy ]; then
  printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && made_policy=1
fi
trap '[ $made_policy -eq 1 ] && rm -f $policy' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
