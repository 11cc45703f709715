#!/usr/bin/env bash
# Parse-checks every .nix file in the repository (nix-instantiate --parse): the Nix
# builds themselves need a Nix store, which CI may not have. Then evaluates the pure
# key check every image build goes through (nix/trusted-key.nix).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || { echo "parse-check: nix-instantiate is required (Debian: nix-bin)" >&2; exit 1; }
n=0 bad=0
while IFS= read -r -d '' f; do
  n=$((n + 1))
  if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    echo "$f: $out" >&2
    bad=$((bad + 1))
  fi
done < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' -print0 | sort -z)
echo "parse-check: $n .nix files, $bad with errors"
[ "$bad" -eq 0 ]

# The image's trusted key: no key, a file that is no key, a missing file and the
# repository's test-only key are refused, each saying how to pass one (lib.mkImage);
# the test key passes only with allowTestKey (the VM tests); a real key passes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "kiln-ed25519 $(head -c 32 /dev/urandom | base64) some-coordinator" > "$tmp/coordinator.pub"
key_eval() { nix-instantiate --eval --strict -E "import ./nix/trusted-key.nix { $1 }" 2>&1; }
checks=0 failed=0
refused() {
  local args=$1 want=$2 out
  checks=$((checks + 1))
  if out=$(key_eval "$args"); then
    echo "key check: { $args } was accepted: $out" >&2; failed=$((failed + 1))
  elif ! grep -q "$want" <<<"$out" || ! grep -q "lib.mkImage" <<<"$out"; then
    echo "key check: { $args } refused without \"$want\" and the way to pass a key: $out" >&2
    failed=$((failed + 1))
  fi
}
accepted() {
  local args=$1 out
  checks=$((checks + 1))
  if ! out=$(key_eval "$args"); then
    echo "key check: { $args } was refused: $out" >&2; failed=$((failed + 1))
  fi
}
refused "" "no trustedKey"
refused "trustedKey = ./README.md;" "is not a kiln public key"
refused "trustedKey = $tmp/missing.pub;" "does not exist"
refused "trustedKey = ./nixos-tests/fixtures/test-coordinator.pub;" "test-only key"
accepted "trustedKey = ./nixos-tests/fixtures/test-coordinator.pub; allowTestKey = true;"
accepted "trustedKey = $tmp/coordinator.pub;"
echo "key-check: $checks evaluations, $failed wrong"
[ "$failed" -eq 0 ]
