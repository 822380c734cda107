# Stub of nixos/modules/image/file-options.nix (nixos-25.11): the image file name options.
{ lib, config, ... }:
{
  options.image = {
    baseName = lib.mkOption { type = lib.types.str; default = "nixos-image"; description = "file name without extension"; };
    extension = lib.mkOption { type = lib.types.str; description = "file name extension"; };
    fileName = lib.mkOption { type = lib.types.str; default = "${config.image.baseName}.${config.image.extension}"; description = "file name"; };
  };
}
