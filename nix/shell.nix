# Everything the tests need: the Rust toolchain and the real parts the whole-path
# tests drive (qemu with iPXE ROMs, podman, sshd, the hardware tools, image tools).
{ pkgs }:
pkgs.mkShell {
  packages = with pkgs; [
    cargo
    rustc
    clippy
    rustfmt
    rust-analyzer
    qemu
    ipxe
    podman
    runc
    openssh
    smartmontools
    lshw
    dmidecode
    stress-ng
    fio
    iperf3
    pciutils
    busybox
    cpio
    zstd
    xz
    kmod
    e2fsprogs
    util-linux
    dnsmasq
    jq
    nix
  ];
}
