# berth (berthd + berth) built from this repository with the committed Cargo.lock. Installs the
# one copy of the systemd units from systemd/ (the .deb, the Ansible role and the image install
# the same files); the NixOS module uses them through `systemd.packages`.
{ lib, rustPlatform, src }:

rustPlatform.buildRustPackage {
  pname = "berth";
  version = (lib.importTOML ../Cargo.toml).package.version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  # Integration tests need dockerd, pebble and systemd tools; the unit tests run here.
  cargoTestFlags = [ "--lib" ];
  postInstall = ''
    for unit in berthd.service berthd.socket berthd-https.socket berthd-api.socket; do
      install -Dm644 systemd/$unit $out/lib/systemd/system/$unit
    done
    substituteInPlace $out/lib/systemd/system/berthd.service \
      --replace-fail /usr/bin/berthd $out/bin/berthd \
      --replace-fail file:///usr/share/doc/berth/README.md file://$out/share/doc/berth/README.md
    install -Dm644 README.md $out/share/doc/berth/README.md
    install -Dm644 systemd/berthd.yaml $out/share/doc/berth/berthd.yaml.example
  '';
  meta = {
    description = "Zero-downtime deployment target: reverse proxy, Docker deploys, ACME";
    license = lib.licenses.asl20;
    mainProgram = "berthd";
    platforms = lib.platforms.linux;
  };
}
