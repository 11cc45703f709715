# kiln's netboot image: a kernel plus a small initrd with busybox, the static agent,
# the hardware tools the stages use, the OpenSSH client (ssh stages), podman with runc
# and conmon (container stages; left out with lean = true), and the coordinator's
# public key baked in. Same layout and contents as image/build-local (its --lean is
# lean = true here): $out/kernel and $out/initrd (zstd cpio).
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
  # The lean flavour: no container engine (exec, hardware and ssh stages only).
  lean ? false,
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
      # ssh stages
      pkgs.openssh
      # held machines (a plan's `hold`): dropbear and dropbearkey
      pkgs.dropbear
    ]
    # container stages: configured by ./containers.conf and ./storage.conf
    ++ lib.optionals (!lean) [
      pkgs.podman
      pkgs.runc
      pkgs.conmon
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
      {
        object = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
        symlink = "/etc/ssl/certs/ca-certificates.crt";
      }
      # dropbear looks root up (home /root, where the agent writes authorized_keys).
      {
        object = pkgs.writeText "passwd" ''
          root:x:0:0:root:/root:/bin/sh
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false
        '';
        symlink = "/etc/passwd";
      }
      {
        object = pkgs.writeText "group" ''
          root:x:0:
          nogroup:x:65534:
        '';
        symlink = "/etc/group";
      }
    ]
    ++ lib.optionals (!lean) [
      {
        object = ./containers.conf;
        symlink = "/etc/containers/containers.conf";
      }
      {
        object = ./storage.conf;
        symlink = "/etc/containers/storage.conf";
      }
      {
        object = pkgs.writeText "policy.json" ''
          {"default": [{"type": "insecureAcceptAnything"}]}
        '';
        symlink = "/etc/containers/policy.json";
      }
      {
        object = pkgs.writeText "registries.conf" ''
          unqualified-search-registries = []
        '';
        symlink = "/etc/containers/registries.conf";
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
    {
      echo "flavour ${if lean then "image-lean" else "image"}"
      echo "initrd: $(du -Lh $out/initrd | cut -f1) compressed (goal: 48 MiB)"
    } > $out/image.txt
  ''
