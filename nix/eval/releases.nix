# What the harness knows about each nixpkgs release flake.nix may pin, read from nixpkgs itself
# (not evaluable here: nixpkgs is not on this machine). scripts/check-nix.sh fails when
# flake.nix pins a release missing from this file, and when Cargo.toml's rust-version is newer
# than the release's rustc.
#   rustc: the default `rustc` of the release (pkgs/top-level/all-packages.nix: rust = rust_1_NN).
#     24.11: 1.82 (rust_1_82 at the 24.11 branch-off). 25.05: 1.86 (unstable was still on 1.86
#     on 2025-06-03, NixOS/nixpkgs#413563, after the 25.05 branch-off on 2025-05-16; not listed
#     below, as 1.86 is older than Cargo.toml's rust-version). 25.11: 1.91.1 (master moved
#     1.91.1 -> 1.92.0 on 2025-12-15, NixOS/nixpkgs#470993, after the 25.11 branch-off on
#     2025-11-24; compiler updates are not backported to stable branches).
#   modulesPath: stubs of the NixOS modules the Berth files import from `modulesPath`, one
#     directory per release holding only modules that release has.
#     nixos/modules/virtualisation/disk-image.nix (system.build.image, image.format) came with
#     the image.* options (nixos/modules/image/file-options.nix, NixOS/nixpkgs#359328, opened
#     2024-11-26), after the 24.11 branch-off (2024-11-14): 24.11 has no disk-image.nix.
{
  "nixos-24.11" = {
    rustc = "1.82.0";
    modulesPath = ./nixos-modules/nixos-24.11;
  };
  "nixos-25.11" = {
    rustc = "1.91.1";
    modulesPath = ./nixos-modules/nixos-25.11;
  };
}
