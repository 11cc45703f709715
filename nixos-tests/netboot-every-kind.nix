# The netbooted image runs every stage kind (local twin: netboot_runs_every_stage_kind
# in e2e/tests/it/netboot.rs): one ticket with an exec, a container (image archive
# served from the coordinator's CAS, podman in the guest, hardened defaults), an ssh
# (to the coordinator node's sshd, which the guest reaches at 10.0.2.2:2222, host key
# pinned by the plan's known_hosts secret) and an inventory stage, all passed; every
# artifact is in the CAS under its digest; the machine powers itself off.
{
  common,
  image,
  testContainer,
  ...
}:
{
  name = "kiln-netboot-every-kind";
  nodes.coordinator = {
    imports = [ common.coordinator ];
    services.openssh = {
      enable = true;
      settings.PermitRootLogin = "prohibit-password";
    };
  };

  testScript = ''
    ${common.prelude}
    start_all()
    start_coordinator(trusted_key=True)
    coordinator.wait_for_unit("sshd.service")
    coordinator.forward_port(2222, 22)
    add_image_and_host("${image}")

    with subtest("a plan with every stage kind, its key and pinned host key as secrets"):
        setup_every_kind("${testContainer}")
        run = kc("ticket", "issue", "--plan", "/tmp/every-kind/plan.toml", "--host", "node1").split()[0]

    with subtest("the machine netboots, runs the four stages and powers off"):
        machine = create_machine("${common.netbootCommand "KILN-EVERY-KIND"} -m 1536", name="every_kind")
        machine.start()
        machine.wait_for_console_text("kiln: run finished: passed")
        machine.wait_for_shutdown()

    with subtest("all passed, and every artifact is in the CAS under its digest"):
        s = show(run)
        assert s["state"] == "finished" and s["outcome"] == "passed", s
        assert [(st["name"], st["outcome"]) for st in s["stages"]] == [
            ("exec", "passed"), ("container", "passed"), ("ssh", "passed"), ("inventory", "passed")
        ], s
        want = {"exec": "exec-ok\n", "container": "container-kiln-a uid=65534\n", "ssh": "remote-ok\n"}
        for st in s["stages"]:
            assert len(st["artifacts"]) == 1, st
            a = st["artifacts"][0]
            path = f"${common.stateDir}/cas/{a['sha256']}"
            coordinator.succeed(f"echo '{a['sha256']}  {path}' | sha256sum -c")
            if st["name"] in want:
                assert coordinator.succeed(f"cat {path}") == want[st["name"]], (st, want)
        assert "KILN-EVERY-KIND" in coordinator.succeed(f"cat ${common.stateDir}/cas/{s['stages'][3]['artifacts'][0]['sha256']}")
        logs = kc("run", "logs", run)
        assert "exec-hello" in logs and "remote-hello" in logs, logs
  '';
}
