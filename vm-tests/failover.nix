# Failover: one replica killed under load, traffic continues on the others, it comes back.
{ berthModule }:
{
  name = "berth-failover";
  nodes.server = import ./common.nix { inherit berthModule; };
  testScript = ''
    server.wait_for_unit("docker.service")
    server.wait_for_unit("berthd.socket")
    server.succeed("berth-test-image demo:v1 v1")
    token = server.succeed("berthd --config /etc/berth/berthd.yaml token create --name vm").strip()
    api = f"curl -sf -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' http://127.0.0.1:9922"
    spec = '{"image":"demo:v1","domains":["demo.test"],"port":8080,"replicas":2,"health":{"path":"/","interval":"1s"},"command":["/bin/httpd","-f","-p","8080","-h","/www"]}'
    server.succeed(api + " -X POST -d '" + spec + "' /v1/apps/demo/deploy")
    server.wait_until_succeeds("curl -sf -H 'Host: demo.test' http://127.0.0.1/ | grep -q v1", timeout=120)
    victim = server.succeed("docker ps -q --filter label=berth.app=demo | head -n1").strip()
    server.succeed("(for i in $(seq 1 300); do curl -s -o /dev/null -w '%{http_code}\\n' -H 'Host: demo.test' http://127.0.0.1/; sleep 0.05; done) > /tmp/codes &")
    server.succeed(f"docker kill {victim}")
    server.wait_until_succeeds("test $(wc -l < /tmp/codes) -ge 300", timeout=120)
    server.succeed("test $(grep -vc '^200$' /tmp/codes) -eq 0")
    # restart policy unless-stopped does not restart a killed container; start it again
    server.succeed(f"docker start {victim}")
    server.wait_until_succeeds(api + " /v1/stats | grep -q '\"up\"'", timeout=60)
  '';
}
