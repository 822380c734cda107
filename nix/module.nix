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
  defaultHttpsListen = "0.0.0.0:443";
  # The packaged socket units listen on 80 and 443 (port-only: IPv6 and IPv4, IPv4 alone where
  # the kernel has no IPv6) and 127.0.0.1:9922. The default addresses keep those units as they
  # are; any other address replaces their ListenStream= in the NixOS drop-in (the empty entry
  # resets the packaged list). Under systemd berthd takes its listeners from these sockets
  # (systemd/berthd.yaml: the configured address is then not bound by berthd itself).
  socket = addr: default: {
    wantedBy = [ "sockets.target" ];
    socketConfig = lib.mkIf (addr != default) { ListenStream = [ "" addr ]; };
  };
  customDataDir = cfg.settings.data_dir != defaults.data_dir;
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
          http.listen = lib.mkOption { type = lib.types.str; default = defaults.http.listen; description = "HTTP proxy listener; any other value than the default replaces berthd.socket's dual-stack port 80."; };
          api.listen = lib.mkOption { type = lib.types.str; default = defaults.api.listen; description = "REST API listener (also the berthd-api.socket address)."; };
          data_dir = lib.mkOption { type = lib.types.str; default = defaults.data_dir; description = "State directory (created owned by berth, mode 0700)."; };
          # One sub-option per key of the default log section, each with its default, so that
          # setting one key (settings.log.level) keeps the others (access_log).
          log = lib.mkOption {
            type = lib.types.submodule {
              freeformType = yaml.type;
              options = lib.mapAttrs (key: value: lib.mkOption {
                type = yaml.type;
                default = value;
                description = "log.${key} (see the README's configuration reference).";
              }) defaults.log;
            };
            default = { };
            description = "Logging (level, format, access_log).";
          };
        };
      };
      default = { };
      description = "berthd.yaml contents (see the README's configuration reference).";
    };

    httpsListen = lib.mkOption {
      type = lib.types.str;
      default = defaultHttpsListen;
      description = "HTTPS listener handed to berthd by berthd-https.socket (the default keeps the packaged dual-stack port 443).";
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
    systemd.sockets.berthd = socket cfg.settings.http.listen defaults.http.listen;
    systemd.sockets.berthd-https = socket cfg.httpsListen defaultHttpsListen;
    systemd.sockets.berthd-api = socket cfg.settings.api.listen defaults.api.listen;

    # The unit's StateDirectory=berth creates /var/lib/berth; another data_dir is created here,
    # owned by berth with the StateDirectoryMode of the unit, and made writable below.
    systemd.tmpfiles.rules = lib.mkIf customDataDir [ "d ${cfg.settings.data_dir} 0700 berth berth - -" ];

    systemd.services.berthd = {
      wantedBy = [ "multi-user.target" ];
      # A restart keeps the listening sockets (socket units + fd store): connections queue.
      restartTriggers = [ configFile ];
      environment.BERTH_DATA_DIR = cfg.settings.data_dir;
      serviceConfig.ReadWritePaths = lib.mkIf customDataDir [ cfg.settings.data_dir ];
    };
  };
}
