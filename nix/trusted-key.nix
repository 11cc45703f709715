# The coordinator key a netboot image trusts, checked. There is no default: the key is
# an explicit input, because an image trusts exactly the tickets its key signed. The
# repository's test key (nixos-tests/fixtures/, whose private key is public) is
# refused unless `allowTestKey` is set, which only the VM tests do.
#
# Pure (builtins only, no nixpkgs), so nixos-tests/parse-check.sh evaluates it alone.
{
  # Path of the coordinator's public key file, the line `kiln-ed25519 …` that
  # `kiln-coordinator --state /srv/kiln key | head -n1` prints.
  trustedKey ? null,
  # Let the test-only key through (nixos-tests/ only).
  allowTestKey ? false,
}:
let
  how = builtins.readFile ./image-key-help.txt;
  # The key field of a key line (the second word; a comment may follow).
  keyField = text: builtins.elemAt (builtins.split "[ \n]+" text) 2;
  testKey = ../nixos-tests/fixtures/test-coordinator.pub;
  text = builtins.readFile trustedKey;
in
if trustedKey == null then
  throw "kiln image: no trustedKey: ${how}"
else if !(builtins.isPath trustedKey || builtins.isString trustedKey) then
  throw "kiln image: trustedKey must be the path of a key file, not a ${builtins.typeOf trustedKey}: ${how}"
else if !builtins.pathExists trustedKey then
  throw "kiln image: trustedKey ${toString trustedKey} does not exist (in a git checkout a flake sees only tracked files: git add it): ${how}"
else if builtins.substring 0 13 text != "kiln-ed25519 " || builtins.length (builtins.split "[ \n]+" text) < 3 then
  throw "kiln image: trustedKey ${toString trustedKey} is not a kiln public key (one line `kiln-ed25519 …`): ${how}"
else if !allowTestKey && keyField text == keyField (builtins.readFile testKey) then
  throw "kiln image: trustedKey ${toString trustedKey} is the repository's test-only key, whose private key is public: anyone could sign tickets this image runs. ${how}"
else
  trustedKey
