# A machine with a dead CMOS clock (local twins: netboot_on_a_dead_clock_sets_it_forward_and_runs
# and an_expired_ticket_is_refused_on_a_dead_clock in e2e/tests/it/netboot.rs): the
# agent sets the clock forward to the coordinator's Date and runs; an expired ticket is
# still refused, naming both times.
{ common, image, ... }:
{
  name = "kiln-netboot-dead-clock";
  nodes.coordinator = common.coordinator;

  testScript = ''
    ${common.prelude}
    start_all()
    start_coordinator(trusted_key=True)
    add_image_and_host("${image}")

    with subtest("a clock at 2001 is set forward and the run, with a secret, passes"):
        put("/tmp/dead-clock/token", "tok-from-the-coordinator\n")
        kc("secret", "set", "token", "--file", "/tmp/dead-clock/token")
        put("/tmp/dead-clock/plan.toml", "\n".join([
            'name = "netboot-dead-clock"',
            'timeout = "10m"',
            "",
            "[[stage]]",
            'name = "clock"',
            'kind = "exec"',
            'command = ["sh", "-c", "echo year=$(date -u +%Y); test -s \\"$KILN_SECRETS_DIR/token\\" && echo secret-ok"]',
            'secrets = ["token"]',
            'timeout = "2m"',
            "",
        ]))
        run = kc("ticket", "issue", "--plan", "/tmp/dead-clock/plan.toml", "--host", "node1").split()[0]
        machine = create_machine("${common.netbootCommand "KILN-DEAD-CLOCK"} -rtc base=2001-01-01", name="dead_clock")
        machine.start()
        machine.wait_for_console_text("kiln: clock set forward by")
        machine.wait_for_console_text("kiln: run finished: passed")
        machine.wait_for_shutdown()
        s = show(run)
        m = [m for m in s["stages"][0]["measurements"] if m["name"] == "agent.clock_set_forward_s"]
        assert m and m[0]["value"] > 20 * 365 * 86400, s
        logs = kc("run", "logs", run)
        assert "clock set forward" in logs and "secret-ok" in logs and "year=2001" not in logs, logs

    with subtest("an expired ticket is refused on a dead clock; nothing runs"):
        run = issue("node1", "--ttl", "1s")
        coordinator.wait_until_succeeds(f"kiln-coordinator-admin run show {run} --json | jq -e '.state == \"expired\"'")
        machine = create_machine(
            "${common.directCommand image} -rtc base=2001-01-01 -append 'console=ttyS0 kiln.url=http://10.0.2.2:7373 kiln.run=" + run + "'",
            name="dead_clock_expired",
        )
        machine.start()
        machine.wait_for_console_text("by the coordinator's clock")
        machine.wait_for_console_text("kiln: idle")
        machine.crash()
        assert show(run)["frames"] == 0
  '';
}
