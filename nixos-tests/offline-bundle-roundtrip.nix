# An offline run: the ticket travels on a disk (ext2, no journal), the machine boots
# the image without network, writes its result bundle next to the ticket and powers
# off; the coordinator imports the bundle and shows the same outcomes as online.
{ pkgs, common, image, ... }:
{
  name = "kiln-offline-bundle-roundtrip";
  nodes.coordinator = common.coordinator;

  testScript = ''
    ${common.prelude}
    import subprocess
    start_all()
    start_coordinator(trusted_key=True)
    kc("host", "add", "offline1", "--serial", "KILN-OFFLINE-1")

    with subtest("an offline ticket goes onto a disk"):
        run = issue("offline1", "--out", "${common.stateDir}/offline/ticket.kiln")
        coordinator.copy_from_vm("${common.stateDir}/offline", "")
        out = os.environ.get("out", os.getcwd())
        disk = os.path.join(out, "offline.img")
        subprocess.run(["${pkgs.e2fsprogs}/bin/mkfs.ext4", "-q", "-F", "-O", "^has_journal",
                        "-d", os.path.join(out, "offline"), disk, "64M"], check=True)

    with subtest("the machine runs it offline and powers off"):
        machine = create_machine("${
          common.offlineCommand {
            inherit image;
            disk = "$out/offline.img";
            serial = "KILN-OFFLINE-1";
          }
        }", name="offline")
        machine.start()
        machine.wait_for_console_text("kiln: run finished: passed")
        machine.wait_for_shutdown()

    with subtest("the coordinator imports the bundle"):
        bundle = os.path.join(out, "result.kiln")
        subprocess.run(["${pkgs.e2fsprogs}/bin/debugfs", "-R", f"dump /result.kiln {bundle}", disk], check=True)
        coordinator.copy_from_host(bundle, "${common.stateDir}/import/result.kiln")
        coordinator.succeed("chmod -R a+rX ${common.stateDir}/import")
        kc("import", "${common.stateDir}/import/result.kiln")
        s = show(run)
        assert s["state"] == "finished" and s["outcome"] == "passed", s
        assert [(st["name"], st["outcome"]) for st in s["stages"]] == [("smoke", "passed"), ("identity", "passed")], s
  '';
}
