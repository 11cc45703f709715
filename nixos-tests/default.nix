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
  # The container stages' image, as e2e's .ci/podman.sh builds it (busybox,
  # ID=kiln-a), as a docker archive: plans name it { archive, name }, no registry.
  testContainer = pkgs.dockerTools.buildImage {
    name = "localhost/kiln-test-a";
    tag = "1";
    copyToRoot = pkgs.buildEnv {
      name = "kiln-test-a-root";
      paths = [ pkgs.pkgsStatic.busybox ];
      pathsToLink = [ "/bin" ];
    };
    extraCommands = ''
      mkdir -p etc tmp var/tmp workspace artifacts
      chmod 1777 tmp var/tmp
      printf 'ID=kiln-a\nNAME="kiln test image a"\nVERSION_ID=1\n' > etc/os-release
      printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > etc/passwd
      printf 'root:x:0:\nnogroup:x:65534:\n' > etc/group
    '';
    config = {
      Cmd = [ "/bin/sh" ];
      Env = [ "PATH=/bin" ];
    };
  };
  runTest =
    scenario:
    pkgs.testers.runNixOSTest {
      imports = [ scenario ];
      _module.args = { inherit common image testContainer; };
    };
in
{
  netboot-exec-passes = runTest ./netboot-exec-passes.nix;
  ticket-signature-mismatch = runTest ./ticket-signature-mismatch.nix;
  offline-bundle-roundtrip = runTest ./offline-bundle-roundtrip.nix;
  netboot-every-kind = runTest ./netboot-every-kind.nix;
  netboot-container-hardening = runTest ./netboot-container-hardening.nix;
  netboot-dead-clock = runTest ./netboot-dead-clock.nix;
}
