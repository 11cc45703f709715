# Shared parts of the scenarios: the coordinator node, the netbooting machine's qemu
# command (as nixpkgs' nixos/tests/boot.nix makeNetbootTest: user-net `bootfile=`,
# `-boot order=n`), and Python helpers for the test scripts.
{ pkgs, kiln, kilnModule }:
let
  qemu = "${pkgs.qemu_test}/bin/qemu-system-x86_64 -machine accel=kvm:tcg -m 1024";
in
rec {
  fixtures = ./fixtures;
  vmMac = "52:54:00:6b:00:01";
  stateDir = "/var/lib/kiln-coordinator";

  coordinator = {
    imports = [ kilnModule ];
    services.kiln-coordinator = {
      enable = true;
      package = kiln;
      listen = "0.0.0.0:7373";
      openFirewall = true;
    };
    environment.systemPackages = [ pkgs.jq ];
    virtualisation.memorySize = 1024;
  };

  # The machine under test: firmware iPXE (qemu's virtio ROM) fetches boot.ipxe from
  # the coordinator, which the driver forwards to the sandbox's 127.0.0.1:7373
  # (qemu user-net's 10.0.2.2).
  netbootCommand =
    serial:
    "${qemu} -netdev user,id=n0,bootfile=http://10.0.2.2:7373/boot.ipxe"
    + " -device virtio-net-pci,netdev=n0,mac=${vmMac} -boot order=n"
    + " -smbios type=1,serial=${serial} -no-reboot";

  # Direct kernel boot with one raw disk and no network: the offline scenario.
  offlineCommand =
    { image, disk, serial }:
    "${qemu} -kernel ${image}/kernel -initrd ${image}/initrd"
    + " -append 'console=ttyS0 kiln.offline=/dev/vda'"
    + " -drive file=${disk},if=virtio,format=raw -nic none"
    + " -smbios type=1,serial=${serial} -no-reboot";

  # Python shared by the test scripts.
  prelude = ''
    import json, os, shlex

    def kc(*args):
        """The coordinator CLI on the service's state folder, as its user."""
        return coordinator.succeed("kiln-coordinator-admin " + " ".join(shlex.quote(a) for a in args))

    def show(run):
        return json.loads(kc("run", "show", run, "--json"))

    def start_coordinator(trusted_key):
        coordinator.wait_for_unit("kiln-coordinator.service")
        if trusted_key:
            # Sign with the test key the image trusts (fixtures/, test only).
            coordinator.succeed(
                "systemctl stop kiln-coordinator",
                "install -m 0600 ${fixtures}/test-coordinator.key ${stateDir}/key/coordinator.key",
                "install -m 0644 ${fixtures}/test-coordinator.pub ${stateDir}/key/coordinator.pub",
                "chown -R --reference=${stateDir}/ ${stateDir}/key",
                "systemctl start kiln-coordinator",
            )
        coordinator.wait_for_open_port(7373)
        coordinator.forward_port(7373, 7373)

    def add_image_and_host(image):
        kc("image", "add", "kiln", "--kernel", f"{image}/kernel", "--initrd", f"{image}/initrd")
        kc("host", "add", "node1", "--mac", "${vmMac}", "--image", "kiln")

    def issue(host, *extra):
        return kc("ticket", "issue", "--plan", "${fixtures}/plan.toml", "--host", host, *extra).split()[0]
  '';
}
