# NixOS module: services.berth. Same units and hardening as systemd/ (socket activation with
# named fds http/https/api, Type=notify, reload, watchdog, fd store), Docker enabled, the
# configuration rendered from `settings` (freeform) to /etc/berth/berthd.yaml.
{ berthPackage }:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.berth;
  yaml = pkgs.formats.yaml { };
  configFile = yaml.generate "berthd.yaml" cfg.settings;
  port = addr: lib.toInt (lib.last (lib.splitString ":" addr));
in
{
  options.services.berth = {
    enable = lib.mkEnableOption "the Berth deployment daemon";

    package = lib.mkOption {
      type = lib.types.package;
      default = berthPackage pkgs.stdenv.hostPlatform.system;
      defaultText = lib.literalExpression "berth from this flake";
      description = "The berth package (berthd + berth).";
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = yaml.type;
        options = {
          http.listen = lib.mkOption { type = lib.types.str; default = "0.0.0.0:80"; description = "HTTP proxy listener."; };
          api.listen = lib.mkOption { type = lib.types.str; default = "127.0.0.1:9922"; description = "REST API listener."; };
          data_dir = lib.mkOption { type = lib.types.str; default = "/var/lib/berth"; description = "State directory."; };
        };
      };
      default = { };
      description = "berthd.yaml contents (see the README's configuration reference).";
    };

    httpsListen = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0:443";
      description = "HTTPS listener handed to berthd by the socket unit.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the HTTP and HTTPS ports.";
    };
  };

  config = lib.mkIf cfg.enable {
    virtualisation.docker.enable = true;
    environment.systemPackages = [ cfg.package ];
    environment.etc."berth/berthd.yaml".source = configFile;

    users.groups.berth = { };
    users.users.berth = {
      isSystemUser = true;
      group = "berth";
      extraGroups = [ "docker" ];
      home = cfg.settings.data_dir;
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [
      (port cfg.settings.http.listen)
      (port cfg.httpsListen)
    ];

    systemd.sockets.berthd = {
      description = "Berth deployment daemon sockets";
      wantedBy = [ "sockets.target" ];
      partOf = [ "berthd.service" ];
      socketConfig = {
        ListenStream = [ cfg.settings.http.listen cfg.httpsListen cfg.settings.api.listen ];
        # One name per ListenStream, in order (systemd applies FileDescriptorName per socket unit,
        # so berthd maps them by position when names repeat; see README "NixOS").
        FileDescriptorName = "http";
        NoDelay = true;
        Backlog = 4096;
      };
    };

    systemd.services.berthd = {
      description = "Berth deployment daemon (reverse proxy, deploys, TLS)";
      after = [ "network-online.target" "docker.service" ];
      wants = [ "network-online.target" ];
      requires = [ "berthd.socket" ];
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ configFile ];
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "all";
        ExecStart = "${cfg.package}/bin/berthd --config /etc/berth/berthd.yaml";
        ExecReload = "${cfg.package}/bin/berthd --config /etc/berth/berthd.yaml reload";
        KillMode = "mixed";
        TimeoutStopSec = 45;
        WatchdogSec = 30;
        Restart = "on-failure";
        FileDescriptorStoreMax = 8;
        User = "berth";
        Group = "berth";
        SupplementaryGroups = [ "docker" ];
        StateDirectory = "berth";
        StateDirectoryMode = "0700";
        ConfigurationDirectory = "berth";
        RuntimeDirectory = "berth";
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectHome = true;
        ProtectSystem = "strict";
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        UMask = "0077";
      };
    };
  };
}
