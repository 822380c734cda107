# Rolling deploy under a request loop: v1 with 3 replicas, then v2; zero failed requests.
{ berthModule }:
{
  name = "berth-deploy";
  nodes.server = import ./common.nix { inherit berthModule; };
  testScript = ''
    server.wait_for_unit("docker.service")
    server.wait_for_unit("berthd.socket")
    server.succeed("berth-test-image demo:v1 v1 && berth-test-image demo:v2 v2")
    token = server.succeed("berthd --config /etc/berth/berthd.yaml token create --name vm").strip()

    def api(path, args=""):
        # One curl whose URL carries the API path (a path after the URL would be a second URL).
        return f"curl -sf -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' {args} http://127.0.0.1:9922{path}"

    server.succeed(api("/v1/apps/demo/deploy", "-X POST --data-binary @${./specs/deploy-v1.json}"))
    server.wait_until_succeeds("curl -sf -H 'Host: demo.test' http://127.0.0.1/ | grep -q v1", timeout=120)
    server.succeed("(for i in $(seq 1 600); do curl -s -o /dev/null -w '%{http_code}\\n' -H 'Host: demo.test' http://127.0.0.1/; sleep 0.05; done) > /tmp/codes &")
    server.succeed(api("/v1/apps/demo/deploy", "-X POST --data-binary @${./specs/deploy-v2.json}"))
    server.wait_until_succeeds("curl -sf -H 'Host: demo.test' http://127.0.0.1/ | grep -q v2", timeout=120)
    server.wait_until_succeeds("test $(wc -l < /tmp/codes) -ge 600", timeout=120)
    server.succeed("test $(grep -vc '^200$' /tmp/codes) -eq 0")
  '';
}
