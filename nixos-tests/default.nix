# kiln's NixOS VM tests. Wraps pkgs.testers.runNixOSTest once; one line per scenario.
# Each has a local twin in e2e/tests/it/netboot.rs that .ci/run runs without Nix.
{
  pkgs,
  kiln,
  kilnModule,
  # The static agent package baked into the test image.
  agent,
}:
let
  common = import ./common.nix { inherit pkgs kiln kilnModule; };
  # The test-only image: it trusts the test key in fixtures/ (test-image.nix).
  image = import ./test-image.nix { inherit pkgs agent; };
  runTest =
    scenario:
    pkgs.testers.runNixOSTest {
      imports = [ scenario ];
      _module.args = { inherit common image; };
    };
in
{
  netboot-exec-passes = runTest ./netboot-exec-passes.nix;
  ticket-signature-mismatch = runTest ./ticket-signature-mismatch.nix;
  offline-bundle-roundtrip = runTest ./offline-bundle-roundtrip.nix;
}
