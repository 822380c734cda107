# The berthd.yaml the NixOS module renders when `services.berth.settings` is left alone. A plain
# attribute set (no nixpkgs needed), so scripts/check-nix.sh evaluates it to JSON and runs
# `berthd check-config` on the result.
{
  http.listen = "0.0.0.0:80";
  api.listen = "127.0.0.1:9922";
  data_dir = "/var/lib/berth";
  log = {
    level = "info";
    access_log = true;
  };
}
