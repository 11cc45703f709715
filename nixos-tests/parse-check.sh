#!/usr/bin/env bash
# Parse-checks every .nix file in the repository (nix-instantiate --parse): the Nix
# builds themselves need a Nix store, which CI may not have.
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
