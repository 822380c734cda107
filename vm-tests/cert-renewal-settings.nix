# berthd settings of the cert-renewal VM test: one static route, ACME against the pebble the
# test starts inside the VM. Plain attribute set: scripts/check-nix.sh evaluates it and runs
# `berthd check-config` on the result.
{
  routes = [{ domains = [ "demo.test" ]; backends = [{ address = "127.0.0.1:8081"; }]; }];
  tls.acme = {
    directory = "https://127.0.0.1:14000/dir";
    ca_root = "/var/lib/pebble/ca.pem";
    check_interval = "5s";
  };
}
