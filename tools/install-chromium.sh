#!/usr/bin/env bash
# Installs Debian's Chromium for the explorer's browser tests (Playwright drives it through
# executable_path; Playwright's own browser download does not work offline). No-op when present.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
