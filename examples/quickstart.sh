#!/usr/bin/env bash
# kiln in one go: a coordinator on loopback, a host entry for this machine, a signed
# ticket for examples/plans/smoke.toml, the agent running it, and the result.
# Every line is a command you could type yourself (see README.md).
# KILN_LISTEN picks the address (default 127.0.0.1:7373); KILN_BIN, KILN_STATE,
# KILN_WORK and KILN_ADDR_FILE the binaries and scratch paths.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KILN_BIN:-target/release}
STATE=${KILN_STATE:-/tmp/kiln-demo}
WORK=${KILN_WORK:-/tmp/kiln-demo-work}
ADDR_FILE=${KILN_ADDR_FILE:-/tmp/kiln-demo.addr}
LISTEN=${KILN_LISTEN:-127.0.0.1:7373}
K="$BIN/kiln-coordinator --state $STATE"
A="$BIN/kiln-agent"
URL="http://$LISTEN"
[ -x "$BIN/kiln-agent" ] || { echo "build first: cargo build --release" >&2; exit 2; }

# This machine's first real MAC names it for the ticket's host binding.
MAC=$(cat /sys/class/net/*/address | grep -v '^00:00:00:00:00:00$' | sort | head -1)

$K init
$K host add "$(hostname)" --mac "$MAC"
# A login for the pages (the password comes on standard input, never the command line).
PASSWORD=${KILN_PASSWORD:-$(head -c 12 /dev/urandom | base64)}
echo "$PASSWORD" | $K user add admin
rm -f "$ADDR_FILE"
$K serve --listen "$LISTEN" --addr-file "$ADDR_FILE" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
# The address file is written once the server listens. A server that exits first
# (the port is taken) or never listens ends the script with the reason.
for _ in $(seq 300); do
  [ -s "$ADDR_FILE" ] && break
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "quickstart: the coordinator could not listen on $LISTEN (is port ${LISTEN##*:} taken?);" \
      "pick another address with KILN_LISTEN, e.g. KILN_LISTEN=127.0.0.1:7374 $0" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$ADDR_FILE" ] || { echo "quickstart: the coordinator is not listening on $LISTEN after 30 s (KILN_LISTEN)" >&2; exit 1; }

RUN=$($K ticket issue --plan examples/plans/smoke.toml --host "$(hostname)" --url "$URL")
$A run --ticket "$URL/v1/runs/$RUN/ticket" --trust "$STATE/key/coordinator.pub" --work "$WORK/$RUN"
$K run show "$RUN"
echo
echo "result page: $URL/runs/$RUN (log in as admin, password $PASSWORD)"
if [ -z "${KILN_QUICKSTART_NO_WAIT:-}" ]; then
  echo "serving it until Ctrl-C"
  wait $SERVER
fi
