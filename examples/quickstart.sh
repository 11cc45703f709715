#!/usr/bin/env bash
# kiln in one go: a coordinator on loopback, a host entry for this machine, a signed
# ticket for examples/plans/smoke.toml, the agent running it, and the result.
# Every line is a command you could type yourself (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KILN_BIN:-target/release}
K="$BIN/kiln-coordinator --state ${KILN_STATE:-/tmp/kiln-demo}"
A="$BIN/kiln-agent"
LISTEN=${KILN_LISTEN:-127.0.0.1:7373}
URL="http://$LISTEN"
[ -x "$BIN/kiln-agent" ] || { echo "build first: cargo build --release" >&2; exit 2; }

# This machine's first network interface names it for the ticket's host binding.
MAC=$(cat "$(ls -d /sys/class/net/*/ | grep -v /lo/ | head -1)address")

$K init
$K host add "$(hostname)" --mac "$MAC"
$K serve --listen "$LISTEN" --addr-file /tmp/kiln-demo.addr &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
while [ ! -s /tmp/kiln-demo.addr ]; do sleep 0.1; done

RUN=$($K ticket issue --plan examples/plans/smoke.toml --host "$(hostname)" --url "$URL")
$A run --ticket "$URL/v1/runs/$RUN/ticket" --trust "${KILN_STATE:-/tmp/kiln-demo}/key/coordinator.pub" \
  --work "/tmp/kiln-demo-work/$RUN" || true
$K run show "$RUN"
echo
echo "result page: $URL/runs/$RUN"
if [ -z "${KILN_QUICKSTART_NO_WAIT:-}" ]; then
  echo "serving it until Ctrl-C"
  wait $SERVER
fi
