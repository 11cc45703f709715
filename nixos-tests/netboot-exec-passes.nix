# A machine netboots the image through iPXE from the coordinator node, claims its
# ticket, runs the exec stages, reports, and powers itself off; the run is `passed`.
{ common, image, ... }:
{
  name = "kiln-netboot-exec-passes";
  nodes.coordinator = common.coordinator;

  testScript = ''
    ${common.prelude}
    start_all()
    start_coordinator(trusted_key=True)

    with subtest("unknown MACs and hosts with nothing pending boot from disk"):
        add_image_and_host("${image}")
        assert coordinator.succeed("curl -sf localhost:7373/ipxe/52-54-00-ff-ff-ff").rstrip().endswith("exit")
        assert "nothing pending" in coordinator.succeed("curl -sf localhost:7373/ipxe/${common.vmMac}")

    with subtest("a pending host gets its image by CAS URLs"):
        run = issue("node1")
        script = coordinator.succeed("curl -sf localhost:7373/ipxe/${common.vmMac}")
        assert f"kiln.run={run}" in script, script
        for sha in [l.split("/cas/")[1].split()[0] for l in script.splitlines() if "/cas/" in l]:
            coordinator.succeed(f"curl -sf -o /dev/null localhost:7373/cas/{sha}")

    with subtest("the machine netboots, runs the ticket and powers off"):
        machine = create_machine("${common.netbootCommand "KILN-NIXOS-1"}", name="netboot")
        machine.start()
        machine.wait_for_console_text("kiln: ticket ok: run " + run)
        machine.wait_for_console_text("kiln: run finished: passed")
        machine.wait_for_shutdown()

    with subtest("the coordinator shows the run passed"):
        s = show(run)
        assert s["state"] == "finished" and s["outcome"] == "passed", s
        assert [(st["name"], st["outcome"]) for st in s["stages"]] == [("smoke", "passed"), ("identity", "passed")], s
        assert "KILN-NIXOS-1" in kc("run", "logs", run)
  '';
}
