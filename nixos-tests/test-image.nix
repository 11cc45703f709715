# The VM tests' netboot image. TEST ONLY: it trusts fixtures/test-coordinator.pub,
# whose private key is in this repository, so anyone can sign tickets it runs. Images
# for real machines come from the flake's lib.mkImage with the operator's own key.
{ pkgs, agent }:
pkgs.callPackage ../image {
  inherit agent;
  trustedKey = ./fixtures/test-coordinator.pub;
  allowTestKey = true;
}
