# NixOS module: services.berth. Uses the one copy of the units (systemd/, installed by
# nix/package.nix): three socket units with FileDescriptorName http/https/api, the hardened
# Type=notify service with reload, watchdog and fd store. The module only adds what NixOS must
# say itself: the listen addresses, the `berth` user, Docker, the firewall, and
# /etc/berth/berthd.yaml rendered from `settings` (freeform; defaults in settings-defaults.nix).
{ berthPackage }:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.berth;
  defaults = import ./settings-defaults.nix;
  yaml = pkgs.formats.yaml { };
  configFile = yaml.generate "berthd.yaml" cfg.settings;
  port = addr: lib.toInt (lib.last (lib.splitString ":" addr));
  # Override the packaged ListenStream= (the empty entry resets the list in the drop-in).
  listenOn = addr: { socketConfig.ListenStream = [ "" addr ]; wantedBy = [ "sockets.target" ]; };
in
{
  options.services.berth = {
    enable = lib.mkEnableOption "the Berth deployment daemon";

    package = lib.mkOption {
      type = lib.types.package;
      default = berthPackage pkgs.stdenv.hostPlatform.system;
      defaultText = lib.literalExpression "berth from this flake";
      description = "The berth package (berthd + berth, with the systemd units).";
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = yaml.type;
        options = {
          http.listen = lib.mkOption { type = lib.types.str; default = defaults.http.listen; description = "HTTP proxy listener (also the berthd.socket address)."; };
          api.listen = lib.mkOption { type = lib.types.str; default = defaults.api.listen; description = "REST API listener (also the berthd-api.socket address)."; };
          data_dir = lib.mkOption { type = lib.types.str; default = defaults.data_dir; description = "State directory."; };
          log = lib.mkOption { type = yaml.type; default = defaults.log; description = "Logging (level, format, access_log)."; };
        };
      };
      default = { };
      description = "berthd.yaml contents (see the README's configuration reference).";
    };

    httpsListen = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0:443";
      description = "HTTPS listener handed to berthd by berthd-https.socket.";
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

    systemd.packages = [ cfg.package ];
    systemd.sockets.berthd = listenOn cfg.settings.http.listen;
    systemd.sockets.berthd-https = listenOn cfg.httpsListen;
    systemd.sockets.berthd-api = listenOn cfg.settings.api.listen;

    systemd.services.berthd = {
      wantedBy = [ "multi-user.target" ];
      # A restart keeps the listening sockets (socket units + fd store): connections queue.
      restartTriggers = [ configFile ];
      environment.BERTH_DATA_DIR = cfg.settings.data_dir;
      serviceConfig.ReadWritePaths = lib.mkIf (cfg.settings.data_dir != defaults.data_dir) [ cfg.settings.data_dir ];
    };
  };
}
