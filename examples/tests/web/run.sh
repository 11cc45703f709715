#!/bin/sh
# The test container reaches the service by its name; nothing else is reachable.
set -eu
. /etc/os-release
echo "testing from $ID"
wget -q -O- http://web:8080/index.html | grep -q "kiln example page"
echo "the web service answered"
