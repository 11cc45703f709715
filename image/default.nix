# kiln's netboot image: a kernel plus a small initrd with busybox, the static agent,
# the hardware tools the stages use, and the coordinator's public key baked in.
# Same layout as image/build-local: $out/kernel and $out/initrd (zstd cpio).
{
  lib,
  pkgs,
  # The static agent package (bin/kiln-agent).
  agent,
  # The coordinator's public key file (`kiln-ed25519 …`), trusted by the agent.
  # Required: no default (see ../nix/trusted-key.nix, which checks it).
  trustedKey ? null,
  # Accept the repository's test-only key (the VM tests in nixos-tests/ only).
  allowTestKey ? false,
  kernel ? pkgs.linuxPackages.kernel,
}:
let
  checkedKey = import ../nix/trusted-key.nix { inherit trustedKey allowTestKey; };

  moduleNames = lib.filter (l: l != "" && !(lib.hasPrefix "#" l)) (
    map (l: lib.trim (lib.head (lib.splitString "#" l))) (
      lib.splitString "\n" (builtins.readFile ./modules.list)
    )
  );

  # The listed modules and their dependencies, depmod'ed for modprobe.
  modules = pkgs.makeModulesClosure {
    inherit kernel;
    firmware = kernel;
    rootModules = moduleNames;
    allowMissing = true;
  };

  tools = pkgs.buildEnv {
    name = "kiln-image-tools";
    paths = [
      agent
      pkgs.smartmontools
      pkgs.lshw
      pkgs.dmidecode
      pkgs.stress-ng
      pkgs.fio
      pkgs.iperf3
      pkgs.pciutils
      pkgs.util-linux
      pkgs.nvme-cli
      pkgs.e2fsprogs
      pkgs.ethtool
      pkgs.kmod
    ];
    pathsToLink = [
      "/bin"
      "/sbin"
      "/share/hwdata"
    ];
  };

  # Every busybox applet as a link in one bin/ (sh, udhcpc, insmod, ip, mount …).
  busybox =
    let
      bb = pkgs.pkgsStatic.busybox;
    in
    pkgs.runCommand "kiln-busybox-bin" { } ''
      mkdir -p $out/bin
      for a in $(${bb}/bin/busybox --list); do
        ln -s ${bb}/bin/busybox $out/bin/$a
      done
      ln -sf ${bb}/bin/busybox $out/bin/busybox
    '';

  initrd = pkgs.makeInitrdNG {
    name = "kiln-initrd";
    compressor = "zstd";
    contents = [
      {
        object = ./init;
        symlink = "/init";
      }
      {
        object = "${busybox}/bin";
        symlink = "/bin";
      }
      {
        object = "${tools}/bin";
        symlink = "/usr/bin";
      }
      {
        object = "${modules}/lib/modules";
        symlink = "/lib/modules";
      }
      {
        object = ./udhcpc.script;
        symlink = "/etc/kiln/udhcpc.script";
      }
      {
        object = checkedKey;
        symlink = "/etc/kiln/trusted.pub";
      }
      {
        object = pkgs.writeText "kiln-module-names" (lib.concatLines moduleNames);
        symlink = "/etc/kiln/module-names";
      }
    ];
  };
in
pkgs.runCommand "kiln-image"
  {
    passthru = { inherit initrd modules; };
    meta.description = "kiln netboot image (kernel + initrd)";
  }
  ''
    mkdir -p $out
    ln -s ${kernel}/${pkgs.stdenv.hostPlatform.linux-kernel.target} $out/kernel
    ln -s ${initrd}/initrd $out/initrd
    echo "initrd: $(du -Lh $out/initrd | cut -f1) compressed" > $out/image.txt
  ''
