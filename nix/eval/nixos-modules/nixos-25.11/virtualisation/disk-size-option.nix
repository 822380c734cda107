# Stub of nixos/modules/virtualisation/disk-size-option.nix (nixos-25.11): same declarations.
{ lib, config, ... }:
{
  options.virtualisation = {
    diskSizeAutoSupported = lib.mkOption { type = lib.types.bool; default = true; internal = true; description = "auto size supported"; };
    diskSize = lib.mkOption {
      type = lib.types.either (lib.types.enum [ "auto" ]) lib.types.ints.positive;
      default = if config.virtualisation.diskSizeAutoSupported then "auto" else 1024;
      description = "MiB of disk";
    };
  };
  config.assertions = [{
    assertion = config.virtualisation.diskSize != "auto" || config.virtualisation.diskSizeAutoSupported;
    message = "virtualisation.diskSize = \"auto\" is not supported here; use an explicit size.";
  }];
}
