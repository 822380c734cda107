# Certificate renewal against nixpkgs' pebble with 2-minute certificates: renewed and swapped
# while a loop of TLS requests sees zero failed handshakes.
{ berthModule }:
{
  name = "berth-cert-renewal";
  nodes.server = { pkgs, ... }: {
    imports = [ (import ./common.nix { inherit berthModule; }) ];
    environment.systemPackages = [ pkgs.pebble pkgs.openssl ];
    networking.extraHosts = "127.0.0.1 demo.test";
    services.berth.settings = import ./cert-renewal-settings.nix;
  };
  testScript = ''
    server.wait_for_unit("berthd.socket")
    server.succeed("mkdir -p /srv && echo ok > /srv/index.html && (busybox httpd -f -p 127.0.0.1:8081 -h /srv >/var/log/httpd.log 2>&1 &)")
    server.succeed("pebble-setup-and-start")
    server.wait_until_succeeds("curl -sf --cacert /var/lib/pebble/root.pem --resolve demo.test:443:127.0.0.1 https://demo.test/", timeout=180)
    first = server.succeed("echo | openssl s_client -connect 127.0.0.1:443 -servername demo.test 2>/dev/null | openssl x509 -noout -serial")
    server.succeed("(for i in $(seq 1 1200); do curl -s -o /dev/null -w '%{http_code}\\n' --cacert /var/lib/pebble/root.pem --resolve demo.test:443:127.0.0.1 https://demo.test/; sleep 0.1; done) > /tmp/codes &")
    server.wait_until_succeeds("echo | openssl s_client -connect 127.0.0.1:443 -servername demo.test 2>/dev/null | openssl x509 -noout -serial | grep -v '" + first.strip() + "'", timeout=240)
    server.wait_until_succeeds("test $(wc -l < /tmp/codes) -ge 1200", timeout=300)
    server.succeed("test $(grep -vc '^200$' /tmp/codes) -eq 0")
  '';
}
