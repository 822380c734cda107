# berth (berthd + berth) built from this repository with the committed Cargo.lock.
{ lib, rustPlatform, src }:

rustPlatform.buildRustPackage {
  pname = "berth";
  version = (lib.importTOML ../Cargo.toml).package.version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  # Integration tests need dockerd, pebble and systemd tools; the unit tests run here.
  cargoTestFlags = [ "--lib" ];
  postInstall = ''
    install -Dm644 systemd/berthd.service $out/lib/systemd/system/berthd.service
    install -Dm644 systemd/berthd.socket $out/lib/systemd/system/berthd.socket
    substituteInPlace $out/lib/systemd/system/berthd.service --replace-quiet /usr/bin/berthd $out/bin/berthd
  '';
  meta = {
    description = "Zero-downtime deployment target: reverse proxy, Docker deploys, ACME";
    license = lib.licenses.asl20;
    mainProgram = "berthd";
    platforms = lib.platforms.linux;
  };
}
