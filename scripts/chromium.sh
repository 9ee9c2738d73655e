#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright's own browser download needs the internet): installed here
# where it is missing and this user can (root and apt-get). Where it cannot, the test session leaves the browser
# tests out and says, in one line, what to install. Never fails `make test` by itself.
CHROMIUM=${TUNEBOARD_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's Chromium for the browser tests (apt-get install chromium)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
  echo "Could not install Chromium with apt-get: the browser tests will be left out" >&2
fi
exit 0
