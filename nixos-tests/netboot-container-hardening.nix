# The hardening holds inside the image as on a host (local twin:
# netboot_container_root_is_read_only_and_figures in e2e/tests/it/netboot.rs): a
# container stage whose command writes to / fails (read-only root); one without
# `network = true` cannot reach the coordinator, one with it can; a container stage
# and `podman run` by hand with the same flags pass in the same guest.
{
  common,
  image,
  testContainer,
  ...
}:
{
  name = "kiln-netboot-container-hardening";
  nodes.coordinator = common.coordinator;

  testScript = ''
    ${common.prelude}
    start_all()
    start_coordinator(trusted_key=True)
    add_image_and_host("${image}")

    with subtest("a read-only root holds in the guest"):
        setup_hardening("${testContainer}")
        run = kc("ticket", "issue", "--plan", "/tmp/hardening/plan.toml", "--host", "node1").split()[0]
        machine = create_machine("${common.netbootCommand "KILN-HARDENING"} -m 1536", name="hardening")
        machine.start()
        machine.wait_for_console_text("kiln: run finished: failed")
        machine.wait_for_shutdown()
        s = show(run)
        assert [(st["name"], st["outcome"]) for st in s["stages"]] == [
            ("timed", "passed"), ("by-hand", "passed"), ("no-network", "passed"),
            ("network", "passed"), ("root-write", "failed")
        ], s
        logs = kc("run", "logs", run)
        assert "Read-only file system" in logs and "wrote-root" not in logs, logs
        assert "[no-network] no-network" in logs and "Network is unreachable" in logs, logs
        assert "reached-the-coordinator" not in logs and "[network] #!ipxe" in logs, logs
        assert "agent-rss" in logs, logs
  '';
}
