#!/usr/bin/env bash
# Install the Debian packages the suite runs for real, then touch the stamp "$1":
#   orthanc, orthanc-dicomweb  the PACS of the source-connector tests
#   haproxy, openssl           the mTLS proxy (and its certificates) in front of Temporal in test_temporal_tls
#   docker-compose             `docker-compose config` validates docker-compose.yml in tests/deploy (no engine needed)
#   chromium, fonts-dejavu-core  headless Chromium renders the HTML report (tests/activities/test_report_html.py, tests/workflows/test_report_pages.py)
# Without root or apt-get it prints one note and carries on: those tests then skip with a clear message.
set -euo pipefail
stamp="$1"
plugin_present() { dpkg -L orthanc-dicomweb 2>/dev/null | grep -q 'libOrthancDicomWeb\.so$'; }
haproxy_present() { command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; }
if command -v Orthanc >/dev/null && plugin_present && command -v unshare >/dev/null && haproxy_present \
    && command -v openssl >/dev/null && command -v docker-compose >/dev/null && command -v chromium >/dev/null; then
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: Orthanc, haproxy, docker-compose or chromium is not installed and apt-get as root is unavailable;" \
       "the PACS connector, Temporal TLS, compose and HTML report browser tests will skip (install with:" \
       "apt-get install orthanc orthanc-dicomweb haproxy openssl docker-compose chromium fonts-dejavu-core)"
  exit 0
fi
# The packaged Orthanc and haproxy services must not start (Orthanc would listen on 0.0.0.0:4242/8042): deny service starts
# for the duration of the install unless a policy already does.
own_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
# A failed install (registry unreachable, dpkg locked) must not fail the whole suite: say so, leave no stamp
# (the next `make test` tries again), and the PACS tests skip with their own message.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb iproute2 \
        util-linux haproxy openssl docker-compose chromium fonts-dejavu-core >/dev/null; }; then
  echo "note: apt-get could not install orthanc orthanc-dicomweb haproxy docker-compose chromium; the PACS" \
       "connector, TLS, compose and HTML report browser tests will skip"
  exit 0
fi
mkdir -p "$(dirname "$stamp")" && touch "$stamp"
