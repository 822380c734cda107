# Offline stand-in for the part of NixOS that nix/module.nix, nix/appliance.nix and the VM tests
# touch: only option DECLARATIONS, written for this harness with the types nixpkgs (25.11) gives
# them, so that merging, priorities (mkDefault/mkForce/option defaults), type checks and
# "defined multiple times" errors come from the real `lib.evalModules`. What NixOS would do
# with the values (write unit files, create users, build images) is not modelled; the harness
# inspects the merged values instead. Options the Berth files never set are not declared, so
# a new use of an undeclared option fails here ("The option `…' does not exist") until it is
# declared below.
{ lib, config, ... }:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-unit-options.nix: a unit setting (Key=) is one value, or a list of values
  # rendered as repeated Key= lines; list definitions concatenate, scalars must agree.
  unitOption = types.mkOptionType {
    name = "systemd option";
    description = "systemd option";
    merge = loc: defs:
      let
        live = lib.filterOverrides defs;
      in
      if lib.any (d: lib.isList d.value) live
      then lib.concatMap (d: lib.toList d.value) live
      else lib.mergeEqualOption loc live;
  };

  unitNames = types.listOf types.str;

  # Options every systemd unit kind has (a subset of nixpkgs' commonUnitOptions).
  commonUnit = {
    enable = mkOption { type = types.bool; default = true; description = "enable"; };
    description = mkOption { type = types.singleLineStr; default = ""; description = "Description="; };
    wantedBy = mkOption { type = unitNames; default = [ ]; description = "WantedBy="; };
    requiredBy = mkOption { type = unitNames; default = [ ]; description = "RequiredBy="; };
    after = mkOption { type = unitNames; default = [ ]; description = "After="; };
    before = mkOption { type = unitNames; default = [ ]; description = "Before="; };
    wants = mkOption { type = unitNames; default = [ ]; description = "Wants="; };
    requires = mkOption { type = unitNames; default = [ ]; description = "Requires="; };
    unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; description = "[Unit]"; };
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; description = "restart triggers"; };
    reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; description = "reload triggers"; };
  };

  service = types.submodule {
    options = commonUnit // {
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; description = "[Service]"; };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
        description = "Environment=";
      };
      path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; description = "PATH"; };
      script = mkOption { type = types.lines; default = ""; description = "ExecStart script"; };
      preStart = mkOption { type = types.lines; default = ""; description = "ExecStartPre script"; };
    };
  };

  socket = types.submodule {
    options = commonUnit // {
      socketConfig = mkOption { type = types.attrsOf unitOption; default = { }; description = "[Socket]"; };
      listenStreams = mkOption { type = types.listOf types.str; default = [ ]; description = "ListenStream="; };
    };
  };

  user = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; description = "name"; };
      isSystemUser = mkOption { type = types.bool; default = false; description = "system user"; };
      isNormalUser = mkOption { type = types.bool; default = false; description = "normal user"; };
      group = mkOption { type = types.str; default = ""; description = "primary group"; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; description = "groups"; };
      home = mkOption { type = types.passwdEntry types.path; default = "/var/empty"; description = "home"; };
      createHome = mkOption { type = types.bool; default = false; description = "create home"; };
    };
  });

  etcFile = types.submodule ({ name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; description = "enable"; };
      target = mkOption { type = types.str; default = name; description = "target"; };
      text = mkOption { type = types.nullOr types.lines; default = null; description = "text"; };
      source = mkOption { type = types.path; description = "source"; };
      mode = mkOption { type = types.str; default = "symlink"; description = "mode"; };
    };
  });
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; internal = true; description = "assertions"; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; internal = true; description = "warnings"; };

    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; description = "packages"; };
    environment.etc = mkOption { type = types.attrsOf etcFile; default = { }; description = "/etc"; };

    users.users = mkOption { type = types.attrsOf user; default = { }; description = "users"; };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options.name = mkOption { type = types.passwdEntry types.str; default = name; description = "name"; };
        options.gid = mkOption { type = types.nullOr types.int; default = null; description = "gid"; };
        options.members = mkOption { type = types.listOf (types.passwdEntry types.str); default = [ ]; description = "members"; };
      }));
      default = { };
      description = "groups";
    };

    networking.firewall.enable = mkOption { type = types.bool; default = true; description = "firewall"; };
    networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; description = "open TCP ports"; };
    networking.extraHosts = mkOption { type = types.lines; default = ""; description = "/etc/hosts lines"; };

    systemd.packages = mkOption { type = types.listOf types.package; default = [ ]; description = "unit packages"; };
    systemd.services = mkOption { type = types.attrsOf service; default = { }; description = "services"; };
    systemd.sockets = mkOption { type = types.attrsOf socket; default = { }; description = "sockets"; };
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; description = "tmpfiles.d lines"; };

    virtualisation.docker.enable = mkOption { type = types.bool; default = false; description = "Docker"; };

    services.openssh.enable = mkOption { type = types.bool; default = false; description = "sshd"; };
    services.cloud-init.enable = mkOption { type = types.bool; default = false; description = "cloud-init"; };

    system.stateVersion = mkOption { type = types.str; default = lib.trivial.release; description = "state version"; };
    system.build = mkOption { type = types.submoduleWith { modules = [ { freeformType = types.lazyAttrsOf types.unspecified; } ]; }; default = { }; description = "build products"; };
  };

  # The system derivation stand-in (what `nix flake check` evaluates for a nixosConfiguration):
  # it fails on failed assertions like NixOS does, and its drvPath depends on the merged
  # configuration, so evaluating it evaluates every option value the Berth files set.
  config.system.build.toplevel =
    let
      failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      everything = builtins.toJSON {
        inherit (config) environment users networking systemd virtualisation services;
        inherit (config.system) stateVersion;
      };
      hash = builtins.replaceStrings [ "e" ] [ "z" ] (builtins.substring 0 32 (builtins.hashString "sha256" everything));
    in
    if failed != [ ] then throw "Failed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
    else {
      type = "derivation";
      name = "nixos-system";
      outPath = "/nix/store/${hash}-nixos-system";
      drvPath = "/nix/store/${hash}-nixos-system.drv";
    };

  config.assertions = lib.mapAttrsToList (n: u: {
    # nixos/modules/config/users-groups.nix asserts this for every user.
    assertion = u.isSystemUser != u.isNormalUser;
    message = "users.users.${n}: exactly one of isSystemUser and isNormalUser must be set";
  }) config.users.users
  ++ lib.mapAttrsToList (n: u: {
    assertion = u.group != "" && config.users.groups ? ${u.group};
    message = "users.users.${n}.group is unset or names no group in users.groups (a check of this harness)";
  }) config.users.users;
}
