{
  description = "Berth: a zero-downtime deployment target (berthd daemon + berth CLI)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (system: pkgs: {
        berth = pkgs.callPackage ./nix/package.nix { src = self; };
        default = self.packages.${system}.berth;
        # The NixOS flavour of the appliance as a raw disk image.
        appliance-image = self.nixosConfigurations.appliance.config.system.build.image or
          (throw "appliance-image needs nixpkgs with system.build.image (NixOS >= 24.11)");
      });

      nixosModules.default = import ./nix/module.nix { berthPackage = system: self.packages.${system}.berth; };
      nixosModules.berth = self.nixosModules.default;

      nixosConfigurations.appliance = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ self.nixosModules.default ./nix/appliance.nix ];
      };

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
