# The offline stand-in for nixpkgs as a flake, for `nix flake check --override-input nixpkgs`
# (scripts/check-nix.sh copies this directory and writes the pinned release's name to
# ./release before using it). Same parts as default.nix: real lib, stub NixOS and packages.
{
  description = "Offline stand-in for nixpkgs: real lib, NixOS option declarations, inert packages";
  outputs = { self }:
    let
      lib = import ./nixpkgs-lib/lib;
      release = lib.removeSuffix "\n" (builtins.readFile ./release);
      facts = (import ./releases.nix).${release};
    in
    builtins.removeAttrs (import ./nixpkgs.nix { inherit lib release facts; }) [ "outPath" "release" "facts" ];
}
