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
          # The netboot image, trusting the key in ./trusted.pub when present (put
          # your coordinator's public key there), else the test-only key.
          image = pkgs.callPackage ./image {
            agent = kilnStatic;
            trustedKey =
              if builtins.pathExists ./trusted.pub then
                ./trusted.pub
              else
                ./nixos-tests/fixtures/test-coordinator.pub;
          };
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
          image = p.image;
        }
      );

      devShells = forAll (pkgs: {
        default = import ./nix/shell.nix { inherit pkgs; };
      });

      formatter = forAll (pkgs: pkgs.nixfmt-rfc-style);
    };
}
