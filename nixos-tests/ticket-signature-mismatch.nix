# The coordinator signs with its own key, which the image does not trust: the
# machine names the reason on its console, runs nothing and stays on.
{ common, image, ... }:
{
  name = "kiln-ticket-signature-mismatch";
  nodes.coordinator = common.coordinator;

  testScript = ''
    ${common.prelude}
    start_all()
    start_coordinator(trusted_key=False)
    add_image_and_host("${image}")
    run = issue("node1")

    with subtest("the console names the refusal"):
        machine = create_machine("${common.netbootCommand "KILN-NIXOS-2"}", name="forged")
        machine.start()
        machine.wait_for_console_text("kiln: ticket refused: signed by an untrusted key")
        machine.wait_for_console_text("kiln: idle")
        assert machine.process.poll() is None, "the refused machine must stay on"

    with subtest("nothing ran and nothing was stored"):
        coordinator.fail("test -e ${common.stateDir}/runs/" + run + "/events.log")
        coordinator.fail("test -e ${common.stateDir}/runs/" + run + "/claim.pub")
        s = show(run)
        assert s["state"] == "pending" and s["frames"] == 0, s
        machine.crash()
  '';
}
