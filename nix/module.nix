# services.kiln-coordinator: the coordinator as a hardened systemd service.
# Used as the flake's nixosModules.coordinator; the flake sets the default package.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.kiln-coordinator;
  stateDir = "/var/lib/${cfg.stateDirectoryName}";
  port = lib.toInt (lib.last (lib.splitString ":" cfg.listen));
  kc = "${lib.getExe' cfg.package "kiln-coordinator"} --state ${stateDir}";
  # The service runs as a dynamic user; files the CLI creates (runs, CAS objects)
  # must belong to that same user, so admin commands run as it too, via systemd-run.
  admin = pkgs.writeShellScriptBin "kiln-coordinator-admin" ''
    exec ${pkgs.systemd}/bin/systemd-run --quiet --pipe --wait --collect \
      --service-type=exec \
      -p DynamicUser=yes -p User=kiln-coordinator \
      -p StateDirectory=${cfg.stateDirectoryName} -p UMask=0077 \
      -p WorkingDirectory=${stateDir} \
      ${kc} "$@"
  '';
in
{
  options.services.kiln-coordinator = {
    enable = lib.mkEnableOption "the kiln coordinator (signs run tickets, serves iPXE and artifacts)";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The package providing `bin/kiln-coordinator`.";
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0:7373";
      example = "10.0.0.1:7373";
      description = "Address the HTTP server listens on (netbooting machines must reach it).";
    };

    stateDirectoryName = lib.mkOption {
      type = lib.types.str;
      default = "kiln-coordinator";
      description = ''
        Name of the state folder under /var/lib (key, hosts.toml, images.toml,
        secrets/, cas/, runs/). Run the CLI against it with
        `kiln-coordinator --state /var/lib/<name> …` as root.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the listen port in the firewall.";
    };

    iperf = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Also run an iperf3 server for `network` stages (and open port 5201).";
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Extra arguments for `kiln-coordinator serve`.";
    };
  };

  config = lib.mkIf cfg.enable {
    # `kiln-coordinator-admin image add …`: the CLI on the service's state folder, as
    # the service's user. It has a private /tmp and no access to /root: give it
    # world-readable input files elsewhere (the Nix store, /srv, the state folder).
    environment.systemPackages = [
      cfg.package
      admin
    ];
    environment.variables.KILN_STATE = stateDir;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (
      [ port ] ++ lib.optional cfg.iperf 5201
    );

    systemd.services.kiln-coordinator = {
      description = "kiln coordinator";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      path = lib.optional cfg.iperf pkgs.iperf3;
      serviceConfig = {
        # init is idempotent: the first start creates the key, later starts keep it.
        ExecStartPre = "${kc} init";
        ExecStart = lib.escapeShellArgs (
          [
            (lib.getExe' cfg.package "kiln-coordinator")
            "--state"
            stateDir
            "serve"
            "--listen"
            cfg.listen
          ]
          ++ lib.optional cfg.iperf "--iperf"
          ++ cfg.extraArgs
        );
        Restart = "on-failure";
        DynamicUser = true;
        User = "kiln-coordinator";
        StateDirectory = cfg.stateDirectoryName;
        StateDirectoryMode = "0700";
        UMask = "0077";
        WorkingDirectory = stateDir;
        # Room for the connection cap (4096 by default, three descriptors each):
        # serve raises its soft open-file limit to this hard limit and sizes the cap
        # to it.
        LimitNOFILE = 65536;

        # Hardening: the coordinator only needs its state folder and the network.
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        # Not "pid": the claim check reads the neighbour table, /proc/net/arp.
        ProcSubset = "all";
        NoNewPrivileges = true;
        RestrictSUIDSGID = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
      };
    };
  };
}
