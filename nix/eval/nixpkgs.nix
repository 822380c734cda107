# Offline stand-in for the flake input `nixpkgs`: the real nixpkgs `lib` (vendored in
# ./nixpkgs-lib, from the pinned release's era) plus
#   - lib.nixosSystem: lib.evalModules over ./nixos-options.nix, a `nixpkgs.*` module and the
#     given modules, with `modulesPath` pointing at the stubs of the NixOS modules that exist
#     in the pinned release (./nixos-modules/<release>/; importing one the release does not
#     have fails the way it would there: the file does not exist);
#   - legacyPackages.<system>: ./pkgs.nix;
#   - testers.runNixOSTest: the test module evaluated against a model of nixos/lib/testing
#     (name, nodes, testScript), with `nixpkgs.*` read-only in every node exactly as
#     nixos/modules/misc/nixpkgs/read-only.nix makes it when the test framework passes its
#     own pkgs (the default for runNixOSTest).
{ lib, release, facts }:

let
  inherit (lib) mkOption types;
  systems = [ "x86_64-linux" "aarch64-linux" ];
  # A string, not a path: "${modulesPath}/…" must name the file here, not a store copy.
  modulesPath = toString facts.modulesPath;

  pkgsFor = system: import ./pkgs.nix { inherit lib system; testers = { inherit runNixOSTest; }; };

  # The ordinary nixpkgs module of a NixOS system: overlays apply to the system's pkgs.
  nixpkgsModule = system: { config, ... }: {
    options.nixpkgs.overlays = mkOption {
      type = types.listOf (types.functionTo (types.functionTo (types.lazyAttrsOf types.unspecified)));
      default = [ ];
      description = "overlays";
    };
    config._module.args.pkgs = lib.fix (final:
      lib.foldl' (prev: overlay: prev // overlay final prev) (pkgsFor system) config.nixpkgs.overlays);
  };

  # nixos/modules/misc/nixpkgs/read-only.nix, the module runNixOSTest puts in every node.
  readOnlyNixpkgs = { config, ... }:
    let cfg = config.nixpkgs; in {
      options.nixpkgs = {
        pkgs = mkOption { type = types.pkgs; description = "The pkgs module argument."; };
        config = mkOption { internal = true; type = types.unique { message = "nixpkgs.config is set to read-only"; } types.anything; description = "config"; };
        overlays = mkOption { internal = true; type = types.unique { message = "nixpkgs.overlays is set to read-only"; } types.anything; description = "overlays"; };
        hostPlatform = mkOption { internal = true; readOnly = true; description = "host platform"; };
      };
      config = {
        _module.args.pkgs = builtins.seq cfg.config (builtins.seq cfg.overlays (builtins.seq cfg.hostPlatform cfg.pkgs));
        nixpkgs.config = cfg.pkgs.config;
        nixpkgs.overlays = cfg.pkgs.overlays;
        nixpkgs.hostPlatform = cfg.pkgs.stdenv.hostPlatform;
      };
    };

  nixosSystem = { system, modules, specialArgs ? { } }:
    lib.evalModules {
      specialArgs = { inherit modulesPath; } // specialArgs;
      modules = [ ./nixos-options.nix (nixpkgsModule system) ] ++ modules;
    };

  # nixos/lib/testing: the options of a test that the Berth VM tests use.
  runNixOSTest = hostPkgs: test:
    let
      framework = { config, ... }: {
        options = {
          name = mkOption { type = types.str; description = "test name"; };
          nodes = mkOption {
            type = types.lazyAttrsOf (types.submoduleWith {
              specialArgs = { inherit modulesPath; };
              modules = [
                ./nixos-options.nix
                (modulesPath + "/virtualisation/qemu-vm.nix")
                readOnlyNixpkgs
                { nixpkgs.pkgs = hostPkgs; }
              ];
            });
            default = { };
            description = "machines";
          };
          testScript = mkOption { type = types.either types.str (types.functionTo types.str); description = "Python test script"; };
          testScriptString = mkOption { type = types.str; readOnly = true; internal = true; description = "final script"; };
          skipLint = mkOption { type = types.bool; default = false; description = "skip pyflakes"; };
          skipTypeCheck = mkOption { type = types.bool; default = false; description = "skip mypy"; };
        };
        config.testScriptString =
          if lib.isFunction config.testScript then config.testScript { inherit (config) nodes; } else config.testScript;
      };
      ev = lib.evalModules { modules = [ framework test ]; };
      # Like the real test derivation, its path depends on the final script and every node.
      hash = builtins.replaceStrings [ "e" ] [ "z" ] (builtins.substring 0 32 (builtins.hashString "sha256" (builtins.toJSON {
        script = ev.config.testScriptString;
        nodes = lib.mapAttrs (_: node: node.system.build.toplevel.drvPath) ev.config.nodes;
      })));
    in
    {
      type = "derivation";
      name = "vm-test-run-${ev.config.name}";
      outPath = "/nix/store/${hash}-vm-test-run-${ev.config.name}";
      drvPath = "/nix/store/${hash}-vm-test-run-${ev.config.name}.drv";
      inherit (ev) config;
    };
in
{
  outPath = "/nix/store/00000000000000000000000000000000-source";
  lib = lib // { inherit nixosSystem; };
  legacyPackages = lib.genAttrs systems pkgsFor;
  inherit release facts;
}
