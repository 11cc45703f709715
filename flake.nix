{
  # Wiring only: packages in nix/*.nix, the module in nix/module.nix, the image in
  # image/default.nix, the VM tests in nixos-tests/.
  description = "kiln: tests machines with signed run tickets, netboot, containers, SSH and hardware stages";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The netboot image trusting your coordinator's key, for your own flake:
      #   kiln.lib.mkImage { system = "x86_64-linux"; trustedKey = ./coordinator.pub; }
      # trustedKey is required (no default) and the repository's test key is refused:
      # nix/trusted-key.nix checks it.
      lib.mkImage =
        {
          system ? "x86_64-linux",
          trustedKey ? null,
          kernel ? null,
        }:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        pkgs.callPackage ./image (
          {
            agent = self.packages.${system}.agent;
            inherit trustedKey;
          }
          // (if kernel == null then { } else { inherit kernel; })
        );

      packages = forAll (
        pkgs:
        let
          kiln = pkgs.callPackage ./nix/package.nix { };
          # Static musl builds: one file each, runs anywhere.
          kilnStatic = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
        in
        {
          inherit kiln;
          coordinator = kilnStatic;
          agent = kilnStatic;
          # No image without your key: building this fails with how to pass one
          # (lib.mkImage above). It never falls back to a key.
          image = pkgs.runCommand "kiln-image-needs-your-key" { } ''
            echo "kiln: nix build .#image has no coordinator key to trust." >&2
            cat ${./nix/image-key-help.txt} >&2
            exit 1
          '';
          default = kilnStatic;
        }
      );

      apps = forAll (pkgs: {
        coordinator = {
          type = "app";
          program = "${self.packages.${pkgs.system}.coordinator}/bin/kiln-coordinator";
        };
        agent = {
          type = "app";
          program = "${self.packages.${pkgs.system}.agent}/bin/kiln-agent";
        };
        default = self.apps.${pkgs.system}.coordinator;
      });

      nixosModules.coordinator =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.kiln-coordinator.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.coordinator;
        };
      nixosModules.default = self.nixosModules.coordinator;

      checks = forAll (
        pkgs:
        let
          p = self.packages.${pkgs.system};
        in
        import ./nix/checks.nix {
          inherit pkgs;
          kiln = p.kiln;
        }
        // import ./nixos-tests {
          inherit pkgs;
          kiln = p.coordinator;
          agent = p.agent;
          kilnModule = ./nix/module.nix;
        }
        // {
          # The image with the test-only key, as the VM tests use it.
          image-test-only = import ./nixos-tests/test-image.nix {
            inherit pkgs;
            agent = p.agent;
          };
        }
      );

      devShells = forAll (pkgs: {
        default = import ./nix/shell.nix { inherit pkgs; };
      });

      formatter = forAll (pkgs: pkgs.nixfmt-rfc-style);
    };
}
