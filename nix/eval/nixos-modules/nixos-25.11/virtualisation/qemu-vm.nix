# Stub of nixos/modules/virtualisation/qemu-vm.nix (nixos-25.11): the options the VM tests set.
{ lib, ... }:
{
  imports = [ ./disk-size-option.nix ];
  options.virtualisation.memorySize = lib.mkOption { type = lib.types.ints.positive; default = 1024; description = "MiB of RAM"; };
  config.virtualisation.diskSizeAutoSupported = false;
}
