{
  description = "Berth: a zero-downtime deployment target (berthd daemon + berth CLI)";

  # nixos-25.11: rustc 1.91.1 (Cargo.toml's rust-version is 1.88) and
  # nixos/modules/virtualisation/disk-image.nix (the appliance image); README, "NixOS".
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      appliance = system: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.default ./nix/appliance.nix ];
      };
      applianceName = { x86_64-linux = "appliance"; aarch64-linux = "appliance-aarch64"; };
    in
    {
      packages = forAll (system: pkgs: {
        berth = pkgs.callPackage ./nix/package.nix { src = self; };
        default = self.packages.${system}.berth;
        # The NixOS flavour of the appliance for this system, as a raw disk image.
        appliance-image = self.nixosConfigurations.${applianceName.${system}}.config.system.build.image;
      });

      nixosModules.default = import ./nix/module.nix { berthPackage = system: self.packages.${system}.berth; };
      nixosModules.berth = self.nixosModules.default;

      nixosConfigurations = nixpkgs.lib.mapAttrs' (system: name: nixpkgs.lib.nameValuePair name (appliance system)) applianceName;

      checks = forAll (system: pkgs:
        let
          test = file: pkgs.testers.runNixOSTest (import file { berthModule = self.nixosModules.default; });
        in
        {
          package = self.packages.${system}.berth;
          vm-deploy = test ./vm-tests/deploy.nix;
          vm-failover = test ./vm-tests/failover.nix;
          vm-cert-renewal = test ./vm-tests/cert-renewal.nix;
        });

      devShells = forAll (system: pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt pkg-config docker-client haproxy nginx wrk pebble ];
        };
      });
    };
}
