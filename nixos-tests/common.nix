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

  # Direct kernel boot on the network (the kernel command line is the caller's
  # -append): for a run the iPXE script no longer offers (an expired ticket).
  directCommand =
    image:
    "${qemu} -kernel ${image}/kernel -initrd ${image}/initrd"
    + " -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=${vmMac} -no-reboot";

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

    def put(path, text):
        """Writes a world-readable file on the coordinator node."""
        import base64
        b64 = base64.b64encode(text.encode()).decode()
        coordinator.succeed(f"mkdir -p $(dirname {path}) && echo {b64} | base64 -d > {path} && chmod a+rX {path}")

    # The container image archive (localhost/kiln-test-a:1) beside each plan: the
    # guest loads it from the coordinator's CAS, no registry.
    def setup_every_kind(container):
        d = "/tmp/every-kind"
        coordinator.succeed(
            f"mkdir -p {d}/tests/remote /root/.ssh && cp {container} {d}/image.tar",
            f"ssh-keygen -q -t ed25519 -N ''' -f {d}/client.key",
            f"cat {d}/client.key.pub >> /root/.ssh/authorized_keys && chmod -R a+rX {d}",
        )
        host_key = " ".join(coordinator.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
        # Pinned for the address the guest dials: never trusted on first use.
        put(f"{d}/known_hosts", f"[10.0.2.2]:2222 {host_key}\n")
        kc("secret", "set", "ssh-key", "--file", f"{d}/client.key")
        kc("secret", "set", "ssh-known-hosts", "--file", f"{d}/known_hosts")
        put(f"{d}/tests/remote/run.sh", "echo remote-hello from $(hostname)\nmkdir -p artifacts\necho remote-ok > artifacts/remote.txt\n")
        put(f"{d}/plan.toml", """name = "netboot-every-kind"
    timeout = "15m"

    [[stage]]
    name = "exec"
    kind = "exec"
    command = ["sh", "-c", "mkdir -p \\"$KILN_ARTIFACTS\\" && echo exec-ok > \\"$KILN_ARTIFACTS/exec.txt\\" && echo exec-hello"]
    timeout = "2m"

    [[stage]]
    name = "container"
    kind = "container"
    image = { archive = "image.tar", name = "localhost/kiln-test-a:1" }
    command = ["sh", "-c", ". /etc/os-release; echo container-$ID uid=$(id -u) > /artifacts/container.txt; cat /artifacts/container.txt"]
    timeout = "5m"

    [[stage]]
    name = "ssh"
    kind = "ssh"
    host = "10.0.2.2"
    port = 2222
    user = "root"
    os = "linux"
    key = "ssh-key"
    known_hosts = "ssh-known-hosts"
    tests = "tests/remote"
    base_dir = "/tmp/kiln-remote"
    timeout = "3m"

    [[stage]]
    name = "inventory"
    kind = "inventory"
    timeout = "3m"
    """.replace("\n    ", "\n"))

    def setup_hardening(container):
        d = "/tmp/hardening"
        coordinator.succeed(f"mkdir -p {d} && cp {container} {d}/image.tar && chmod -R a+rX {d}")
        by_hand = ("podman run --rm --pull=never --read-only --cap-drop ALL --security-opt no-new-privileges"
                   " --user 65534:65534 --network none --memory 536870912 --pids-limit 256 localhost/kiln-test-a:1 true")
        put(f"{d}/plan.toml", """name = "netboot-container-hardening"
    timeout = "15m"

    [[stage]]
    name = "timed"
    kind = "container"
    image = { archive = "image.tar", name = "localhost/kiln-test-a:1" }
    command = ["true"]
    timeout = "5m"

    [[stage]]
    name = "by-hand"
    kind = "exec"
    command = ["sh", "-c", "a=$(cut -d' ' -f1 /proc/uptime); BY_HAND || exit 1; b=$(cut -d' ' -f1 /proc/uptime); echo by-hand $a $b; for p in $(pidof kiln-agent); do echo agent-rss $(grep VmHWM /proc/$p/status); done"]
    timeout = "5m"

    [[stage]]
    name = "no-network"
    kind = "container"
    image = { archive = "image.tar", name = "localhost/kiln-test-a:1" }
    command = ["sh", "-c", "if GET; then echo reached-the-coordinator; else echo no-network; fi"]
    timeout = "5m"

    [[stage]]
    name = "network"
    kind = "container"
    image = { archive = "image.tar", name = "localhost/kiln-test-a:1" }
    network = true
    command = ["sh", "-c", "GET"]
    timeout = "5m"

    [[stage]]
    name = "root-write"
    kind = "container"
    image = { archive = "image.tar", name = "localhost/kiln-test-a:1" }
    command = ["sh", "-c", "echo x > /written && echo wrote-root"]
    timeout = "5m"
    """.replace("\n    ", "\n").replace("BY_HAND", by_hand).replace(
            "GET", "printf 'GET /boot.ipxe HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 20 10.0.2.2 7373"))
  '';
}
