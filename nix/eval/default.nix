# Offline evaluation of flake.nix, the NixOS module, the appliance and the NixOS VM tests with
# the real nixpkgs `lib` (./nixpkgs-lib) and stubs of what nixpkgs would add (see
# ./nixpkgs.nix). scripts/check-nix.sh evaluates each attribute below on its own
# (`nix-instantiate --eval --strict --json -A NAME`), writes the rendered berthd.yaml files and
# hands them to `berthd check-config`, and runs the VM tests' final test scripts through
# ./driver_check.py. Every attribute carries `failures`: what the module or flake does wrong,
# as sentences; an evaluation error is a failure too.
let
  lib = import ./nixpkgs-lib/lib;
  root = ../..;
  flake = import (root + "/flake.nix");
  url = flake.inputs.nixpkgs.url;
  release = lib.last (lib.splitString "/" url);
  allFacts = import ./releases.nix;
  facts = allFacts.${release} or (throw
    "flake.nix pins ${url}; nix/eval/releases.nix has no facts about ${release} (known: ${lib.concatStringsSep ", " (lib.attrNames allFacts)}): read its rustc version and modules from nixpkgs and add them");
  nixpkgs = import ./nixpkgs.nix { inherit lib release facts; };
  outputs = flake.outputs { inherit self nixpkgs; };
  self = outputs // { outPath = toString root; };

  defaults = import (root + "/nix/settings-defaults.nix");
  cargo = lib.importTOML (root + "/Cargo.toml");

  check = cond: msg: lib.optional (!cond) msg;
  failedAssertions = cfg: map (a: "assertion: ${a.message}") (lib.filter (a: !a.assertion) cfg.assertions);

  rendered = cfg: cfg.environment.etc."berth/berthd.yaml".source.renderedJSON;
  renderedValue = cfg: builtins.fromJSON (rendered cfg);

  # One NixOS system with the module and `extra` configuration.
  system = extra: (nixpkgs.lib.nixosSystem {
    system = "x86_64-linux";
    modules = [ self.nixosModules.default extra ];
  }).config;

  packagedListen = { berthd = "80"; berthd-https = "443"; berthd-api = "127.0.0.1:9922"; };
  listenOverride = cfg: name: cfg.systemd.sockets.${name}.socketConfig.ListenStream or null;

  socketChecks = cfg: lib.concatMap (name:
    check (lib.elem "sockets.target" cfg.systemd.sockets.${name}.wantedBy)
      "systemd.sockets.${name} is not wanted by sockets.target")
    (lib.attrNames packagedListen);

  scenarios = {
    # services.berth.enable and nothing else.
    default = system { services.berth.enable = true; };
    # One log key set: the other keys of the default log section must stay.
    log-level = system { services.berth = { enable = true; settings.log.level = "debug"; }; };
    # Every address and the data directory moved.
    custom = system {
      services.berth = {
        enable = true;
        openFirewall = true;
        httpsListen = "[::]:8443";
        settings = {
          http.listen = "0.0.0.0:8080";
          api.listen = "127.0.0.1:9000";
          data_dir = "/srv/berth";
        };
      };
    };
  };

  module =
    let
      d = scenarios.default;
      l = scenarios.log-level;
      c = scenarios.custom;
      dataDirRule = cfg: dir: lib.any (r: builtins.match "d +${lib.escapeRegex dir} +07[0-7]0 +berth +berth( .*)?" r != null) cfg.systemd.tmpfiles.rules;
    in
    {
      configs = lib.mapAttrs (_: rendered) scenarios;
      failures =
        lib.concatMap failedAssertions (lib.attrValues scenarios)
        ++ check (renderedValue d == defaults)
          "default settings render ${rendered d}, not nix/settings-defaults.nix"
        ++ check ((renderedValue l).log == defaults.log // { level = "debug"; })
          "settings.log.level = \"debug\" renders log = ${builtins.toJSON (renderedValue l).log}: the other default log keys (${builtins.toJSON defaults.log}) were dropped"
        ++ lib.concatMap (name:
          check (listenOverride d name == null)
            "default settings override ${name}.socket's packaged ListenStream=${packagedListen.${name}} with ${builtins.toJSON (listenOverride d name)} (the packaged unit listens there already; a port-only address is dual-stack)")
          (lib.attrNames packagedListen)
        ++ socketChecks d ++ socketChecks c
        ++ check (listenOverride c "berthd" == [ "" "0.0.0.0:8080" ]) "http.listen 0.0.0.0:8080 gives ListenStream ${builtins.toJSON (listenOverride c "berthd")}"
        ++ check (listenOverride c "berthd-https" == [ "" "[::]:8443" ]) "httpsListen [::]:8443 gives ListenStream ${builtins.toJSON (listenOverride c "berthd-https")}"
        ++ check (listenOverride c "berthd-api" == [ "" "127.0.0.1:9000" ]) "api.listen 127.0.0.1:9000 gives ListenStream ${builtins.toJSON (listenOverride c "berthd-api")}"
        ++ check (c.networking.firewall.allowedTCPPorts == [ 8080 8443 ]) "openFirewall opens ${builtins.toJSON c.networking.firewall.allowedTCPPorts}, not [8080,8443]"
        ++ check (d.networking.firewall.allowedTCPPorts == [ ]) "the firewall is opened without openFirewall"
        ++ check (dataDirRule c "/srv/berth")
          "data_dir = /srv/berth: no systemd.tmpfiles rule creates it owned by berth (rules: ${builtins.toJSON c.systemd.tmpfiles.rules})"
        ++ check (c.systemd.services.berthd.serviceConfig.ReadWritePaths or [ ] == [ "/srv/berth" ]) "data_dir = /srv/berth is not in ReadWritePaths"
        ++ check (c.systemd.services.berthd.environment.BERTH_DATA_DIR == "/srv/berth") "BERTH_DATA_DIR does not follow data_dir"
        ++ check (d.systemd.tmpfiles.rules == [ ] && !(d.systemd.services.berthd.serviceConfig ? ReadWritePaths))
          "the default data_dir (the unit's StateDirectory=berth) gets extra tmpfiles rules or ReadWritePaths"
        ++ check (d.users.users.berth.isSystemUser && lib.elem "docker" d.users.users.berth.extraGroups) "the berth user is not a system user in the docker group"
        ++ check d.virtualisation.docker.enable "Docker is not enabled"
        ++ check (lib.elem d.services.berth.package d.systemd.packages) "the package's units are not in systemd.packages";
    };

  systems = lib.attrNames outputs.packages;

  # The pinned release against Cargo.toml (on its own: needs nothing else to evaluate).
  pin = {
    inherit release url;
    rustc = facts.rustc;
    rustVersion = cargo.package.rust-version;
    failures =
      check (lib.versionAtLeast facts.rustc cargo.package.rust-version)
        "Cargo.toml has rust-version = ${cargo.package.rust-version}, newer than rustc ${facts.rustc} of ${release}: the package cannot build there";
  };

  flakeItem = {
    failures =
      check (systems == [ "aarch64-linux" "x86_64-linux" ]) "packages cover ${builtins.toJSON systems}"
      ++ lib.concatMap (s:
        let p = outputs.packages.${s}; in
        check (p.berth.version == cargo.package.version) "packages.${s}.berth has version ${p.berth.version}"
        ++ check (p.default == p.berth) "packages.${s}.default is not berth"
        ++ check (p.appliance-image.system == s)
          "packages.${s}.appliance-image is built for ${p.appliance-image.system}, not ${s}"
        ++ check (p.appliance-image.format == "raw") "packages.${s}.appliance-image is ${p.appliance-image.format}, not a raw disk image"
        ++ check (outputs.devShells.${s}.default.type == "derivation") "devShells.${s}.default")
        systems
      ++ lib.concatMap (n: failedAssertions outputs.nixosConfigurations.${n}.config) (lib.attrNames outputs.nixosConfigurations);
    images = lib.mapAttrs (s: p: { inherit (p.appliance-image) system format name; }) outputs.packages;
    appliance = lib.mapAttrs (n: c: rendered c.config) outputs.nixosConfigurations;
    checks = lib.mapAttrs (s: lib.attrNames) outputs.checks;
  };

  # Every check of the flake that is a NixOS test, for each system.
  vmTest = name:
    lib.mapAttrs (s: checks:
      let
        t = checks.${name}.config;
        nodes = t.nodes;
      in
      {
        script = t.testScriptString;
        nodes = lib.attrNames nodes;
        configs = lib.mapAttrs (_: rendered) nodes;
        # Shell scripts the nodes install (they run under the driver's succeed()).
        scripts = lib.listToAttrs (lib.concatMap (n:
          map (p: lib.nameValuePair "${n}:${p.name}" p.scriptText)
            (lib.filter (p: p ? scriptText) nodes.${n}.environment.systemPackages))
          (lib.attrNames nodes));
        failures = lib.concatMap (n:
          map (f: "node ${n}: ${f}") (failedAssertions nodes.${n})
          ++ lib.concatMap (k:
            check ((renderedValue nodes.${n}).log ? ${k})
              "node ${n} renders log = ${builtins.toJSON (renderedValue nodes.${n}).log}: the default log.${k} was dropped")
            (lib.attrNames defaults.log))
          (lib.attrNames nodes);
      }) outputs.checks;
in
{
  inherit pin;
  flake = flakeItem;
  inherit module;
  vm-deploy = vmTest "vm-deploy";
  vm-failover = vmTest "vm-failover";
  vm-cert-renewal = vmTest "vm-cert-renewal";
}
