#!/bin/sh
# A smoke test: exit 0 passes, 42 passes with a warning, 43 skips, anything else fails.
# Files written under ./artifacts/ are collected into the report.
set -eu
echo "smoke test at level ${LEVEL:-1} on $(uname -sm)"
mkdir -p artifacts
uname -a > artifacts/uname.txt
if [ -r /etc/os-release ]; then
    . /etc/os-release
    echo "distribution: ${PRETTY_NAME:-unknown}"
fi
test -w . || { echo "working folder is not writable" >&2; exit 1; }
echo "ok"
