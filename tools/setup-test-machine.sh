#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root).
# Every real peer a test uses is listed here, so a new machine needs nothing
# installed by hand. Idempotent: installs only what is missing.
set -euo pipefail

# Debian packages the tests use, each with the reason.
PACKAGES=(
  procps        # kill(1): tests stop the servers they start by PID
  libclang-dev  # bindgen, for the rocksdb crate's C++ build
  clang         # bindgen finds the C++ standard headers through it
  fiu-utils     # fiu-run/fiu-ctrl: make fdatasync fail under the real server
  postgresql-client  # psql against the Postgres wire protocol endpoint
  ngircd        # a real IRC server behind the capture proxy
  ii            # a real, scriptable IRC client (FIFO in, file out)
  proxychains4  # sends ii through the proxy's SOCKS5 port
  prosody       # a real XMPP server behind the capture proxy
  python3-slixmpp  # a real XMPP client library
  sip-tester    # sipp, sending SIP MESSAGE to the listener
  openssl       # a self-signed certificate, so prosody offers STARTTLS
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Rust components CI runs.
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi
