#!/bin/sh
# Runs on the remote Linux host from the uploaded bundle's folder.
set -eu
echo "running on $(hostname) as $(id -un)"
mkdir -p artifacts
uname -a > artifacts/uname.txt
df -h / > artifacts/df.txt
echo "ok"
