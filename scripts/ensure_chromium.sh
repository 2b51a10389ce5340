#!/usr/bin/env bash
# Install Debian's Chromium if /usr/bin/chromium is absent. Idempotent; CI runs it before
# the tests (the `browser` tests open report.html in it) and `mimscale analyze --png`
# renders PNGs through kaleido with it (kaleido finds it on PATH or via BROWSER_PATH).
# Runs as root on a fresh Debian machine; elsewhere it uses sudo when there is one.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    echo "ensure_chromium: $CHROMIUM already installed"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
        echo "ensure_chromium: not root and no sudo; run: apt-get install -y chromium" >&2
        exit 1
    fi
    SUDO=(sudo)
fi
if ! command -v apt-get >/dev/null; then
    echo "ensure_chromium: no apt-get (not Debian/Ubuntu); install Chromium and set BROWSER_PATH" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get update can fail on a flaky mirror; try a few times before giving up.
for attempt in 1 2 3; do
    if "${SUDO[@]}" apt-get update -qq; then
        break
    fi
    if [[ "$attempt" -eq 3 ]]; then
        echo "ensure_chromium: apt-get update failed" >&2
        exit 1
    fi
    sleep $((attempt * 5))
done
# fonts-liberation: metric-compatible Helvetica/Arial, so figure text has real glyphs.
"${SUDO[@]}" apt-get install -y -qq chromium fonts-liberation

if [[ ! -x "$CHROMIUM" ]]; then
    echo "ensure_chromium: installed, but $CHROMIUM is missing" >&2
    exit 1
fi
echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
