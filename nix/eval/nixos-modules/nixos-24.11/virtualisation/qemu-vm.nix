# Stub of nixos/modules/virtualisation/qemu-vm.nix (nixos-24.11): the options the VM tests set.
{ lib, ... }:
{
  options.virtualisation = {
    memorySize = lib.mkOption { type = lib.types.ints.positive; default = 1024; description = "MiB of RAM"; };
    diskSize = lib.mkOption { type = lib.types.nullOr lib.types.ints.positive; default = 1024; description = "MiB of disk"; };
  };
}
