#!/usr/bin/env bash
# Install Debian's nginx for the edge test (tests/e2e/test_nginx_edge.py), which starts the
# binary itself on a free port with deploy/nginx/axon.conf. The package's own service is never
# started: a test machine must not gain a web server listening on port 80.
set -euo pipefail

nginx_binary() {
    if [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    else
        command -v nginx 2>/dev/null || true
    fi
}

if [[ -n "$(nginx_binary)" ]]; then
    echo "nginx already installed: $("$(nginx_binary)" -v 2>&1)"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

listening_on_80() {
    (exec 3<>/dev/tcp/127.0.0.1/80) 2>/dev/null
}

busy_before=false
if listening_on_80; then
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
printf '#!/bin/sh\n# Installing nginx for its binary: start no service.\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 755 "$POLICY"

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends nginx

# Keep the service off across reboots too, where an init system manages it.
if [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
elif command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
fi

if ! $busy_before && listening_on_80; then
    # Started anyway (an init system that ignores policy-rc.d): stop the package's server,
    # which reads the default configuration and its pid file.
    $SUDO "$(nginx_binary)" -s quit >/dev/null 2>&1 || true
    sleep 1
    if listening_on_80; then
        echo "error: something listens on 127.0.0.1:80 after installing nginx" >&2
        exit 1
    fi
fi
"$(nginx_binary)" -v 2>&1
