# Stub of nixos/modules/virtualisation/disk-image.nix (nixos-25.11): the same option
# declarations; of its config only system.build.image, reduced to the facts the harness checks
# (the system it is built for, the format). The real one also sets the boot loader
# (systemd-boot with efiSupport, GRUB without), growPartition and the root file system.
{ config, lib, pkgs, ... }:
let
  cfg = config.image;
in
{
  imports = [ ./disk-size-option.nix ../image/file-options.nix ];
  options.image = {
    format = lib.mkOption { type = lib.types.enum [ "raw" "qcow2" ]; default = "qcow2"; description = "raw or qcow2"; };
    efiSupport = lib.mkOption { type = lib.types.bool; default = true; description = "EFI or legacy boot"; };
  };
  config = {
    image.extension = cfg.format;
    system.build.image = {
      type = "derivation";
      name = cfg.fileName;
      outPath = "/nix/store/00000000000000000000000000000000-${cfg.fileName}";
      inherit (pkgs.stdenv.hostPlatform) system;
      inherit (cfg) format efiSupport;
      inherit (config.virtualisation) diskSize;
    };
  };
}
