# kiln's two binaries, kiln-coordinator and kiln-agent, from this workspace.
# Built with pkgsStatic (see flake.nix) they are static musl binaries.
{
  lib,
  rustPlatform,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "kiln";
  inherit (cargoToml.workspace.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../protocol
      ../coordinator
      ../agent
      ../e2e
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "-p"
    "kiln-coordinator"
    "-p"
    "kiln-agent"
  ];
  # Unit and protocol tests; the whole-path tests (e2e) need qemu, podman and sshd
  # and run as their own checks (nixos-tests) or in .ci/run.
  cargoTestFlags = [
    "-p"
    "kiln-protocol"
    "-p"
    "kiln-coordinator"
    "-p"
    "kiln-agent"
    "--lib"
  ];

  meta = {
    description = "Tests machines: signed run tickets, netboot, containers, SSH, hardware";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "kiln-coordinator";
    platforms = lib.platforms.linux;
  };
}
