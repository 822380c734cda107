# Offline stand-in for `nixpkgs.legacyPackages.${system}`: only the names the Berth Nix files
# use. Packages are inert derivation-shaped attribute sets (they satisfy `types.package` and
# interpolate to a /nix/store path); the builders keep their inputs so the harness can read
# them back: `formats.yaml {}`.generate keeps the value it would render (with nixpkgs' own
# option type for YAML values), `writeShellScriptBin` keeps the script text,
# `rustPlatform.buildRustPackage` keeps its arguments. Nothing here is built.
{ lib, system, testers }:

let
  fake = name: extra:
    let
      # 32 characters of Nix's base-32 alphabet (no e, o, t, u), as in a real store path.
      hash = builtins.replaceStrings [ "e" ] [ "z" ] (builtins.substring 0 32 (builtins.hashString "sha256" "${system}-${name}"));
    in
    {
      type = "derivation";
      inherit name system;
      outPath = "/nix/store/${hash}-${name}";
      drvPath = "/nix/store/${hash}-${name}.drv";
      outputName = "out";
    } // extra;

  pkg = name: fake name { pname = name; };

  self = {
    _type = "pkgs"; # lib.types.pkgs accepts only this
    inherit lib system;
    stdenv.hostPlatform = { inherit system; isLinux = true; };
    stdenv.buildPlatform = { inherit system; isLinux = true; };
    config = { };
    overlays = [ ];

    formats.yaml = { }: {
      # pkgs/pkgs-lib/formats.nix (yaml_1_1): a recursive YAML value type.
      type =
        let
          valueType = types.nullOr (types.oneOf [
            types.bool types.int types.float types.str types.path
            (types.attrsOf valueType) (types.listOf valueType)
          ]) // { description = "YAML 1.1 value"; };
          types = lib.types;
        in
        valueType;
      # nixpkgs renders builtins.toJSON value with json2yaml; JSON is YAML, so the harness
      # writes `renderedJSON` to a file and hands it to `berthd check-config`.
      generate = name: value: fake name { renderedJSON = builtins.toJSON value; };
    };

    writeShellScriptBin = name: text: fake name { scriptText = text; };
    writeText = name: text: fake name { fileText = text; };

    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn;
      in f (builtins.intersectAttrs (lib.functionArgs f) self // args);

    rustPlatform.buildRustPackage = args: fake "${args.pname}-${args.version}" {
      inherit (args) pname version;
      buildArgs = args;
      meta = args.meta or { };
    };

    mkShell = args: fake "nix-shell" { shellPackages = args.packages or [ ]; };

    testers.runNixOSTest = testers.runNixOSTest self;

    pkgsStatic.busybox = pkg "busybox-static";
  } // lib.genAttrs [
    "busybox" "cargo" "clippy" "coreutils" "curl" "docker-client" "haproxy" "nginx" "openssl"
    "pebble" "pkg-config" "rustc" "rustfmt" "wrk"
  ] pkg;
in
self
