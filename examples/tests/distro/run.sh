#!/bin/sh
# Runs inside each container of the matrix, as an unprivileged user.
set -eu
. /etc/os-release
echo "image: ${ID} ${VERSION_ID:-rolling}, axis SHELL_LEVEL=${SHELL_LEVEL:-unset}"
id
# The root filesystem is read-only; /tmp is a small tmpfs.
if touch /etc/kiln-probe 2>/dev/null; then
    echo "root filesystem is writable" >&2
    exit 1
fi
echo probe > /tmp/probe && rm /tmp/probe
echo "ok"
