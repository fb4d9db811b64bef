#!/usr/bin/env bash
# Install Debian's prometheus package for the rule tests: it provides `promtool` (checks and
# unit-tests deploy/prometheus/) and the `prometheus` binary the tests start themselves, on
# their own port and data directory. The package's own service is never started: a test
# machine must not gain a Prometheus listening on 9090 and scraping localhost.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool already installed: $(promtool --version 2>&1 | head -n 1)"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

listening_on_9090() {
    (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null
}

busy_before=false
if listening_on_9090; then
    busy_before=true
fi

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service; exit code
# 101 means "forbidden". Any policy-rc.d already there is put back afterwards.
POLICY=/usr/sbin/policy-rc.d
BACKUP=""
if [[ -e "$POLICY" ]]; then
    BACKUP="$(mktemp)"
    $SUDO cp -p "$POLICY" "$BACKUP"
fi
restore_policy() {
    if [[ -n "$BACKUP" ]]; then
        $SUDO cp -p "$BACKUP" "$POLICY"
        rm -f "$BACKUP"
    else
        $SUDO rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# Installing prometheus for its tools: start no service.\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 755 "$POLICY"

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# Without recommends: prometheus-node-exporter would be another service.
$SUDO apt-get install -y --no-install-recommends prometheus

# Keep the service off across reboots too, where an init system manages it.
if [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

if ! $busy_before && listening_on_9090; then
    echo "error: something listens on 127.0.0.1:9090 after installing prometheus" >&2
    exit 1
fi
promtool --version 2>&1 | head -n 1
