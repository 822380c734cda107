# The NixOS flavour of the Berth appliance: Docker, berthd with socket-activated listeners,
# cloud-init for provider SSH keys, and a first-boot unit that creates the API token.
{ config, lib, pkgs, modulesPath, ... }:

{
  # system.build.image; in nixpkgs since 25.05 (the pinned nixos-25.11 has it, 24.11 does not).
  imports = [ "${modulesPath}/virtualisation/disk-image.nix" ];
  image.format = "raw";

  services.berth = {
    enable = true;
    openFirewall = true;
  };
  services.cloud-init.enable = true;
  services.openssh.enable = true;

  systemd.services.berth-first-boot = {
    description = "Create the first Berth API token";
    wantedBy = [ "multi-user.target" ];
    after = [ "berthd.service" ];
    unitConfig.ConditionPathExists = "!/var/lib/berth/first-boot-token";
    # As the daemon's user, so the database and its WAL files stay berth's.
    serviceConfig = {
      Type = "oneshot";
      User = "berth";
      Group = "berth";
      StandardOutput = "journal+console";
    };
    script = ''
      token=$(${config.services.berth.package}/bin/berthd --config /etc/berth/berthd.yaml token create --name first-boot)
      umask 077
      echo "$token" > /var/lib/berth/first-boot-token
      echo "Berth API token (also in /var/lib/berth/first-boot-token): $token"
    '';
  };

  system.stateVersion = "25.11";
}
