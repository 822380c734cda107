# Failover: one replica's process dies (SIGKILL from the host, as a crash would) under load;
# traffic continues on the other replica, Docker's restart policy (unless-stopped) brings the
# container back and Berth's health checks put it back in rotation. (`docker kill` would count
# as a manual stop, which the restart policy honours, so the test kills the process itself.)
{ berthModule }:
{
  name = "berth-failover";
  nodes.server = import ./common.nix { inherit berthModule; };
  testScript = ''
    server.wait_for_unit("docker.service")
    server.wait_for_unit("berthd.socket")
    server.succeed("berth-test-image demo:v1 v1")
    token = server.succeed("berthd --config /etc/berth/berthd.yaml token create --name vm").strip()

    def api(path, args=""):
        # One curl whose URL carries the API path (a path after the URL would be a second URL).
        return f"curl -sf -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' {args} http://127.0.0.1:9922{path}"

    server.succeed(api("/v1/apps/demo/deploy", "-X POST --data-binary @${./specs/failover.json}"))
    server.wait_until_succeeds("curl -sf -H 'Host: demo.test' http://127.0.0.1/ | grep -q v1", timeout=120)
    server.wait_until_succeeds(api("/v1/stats") + " | grep -o '\"health\":\"up\"' | wc -l | grep -qx 2", timeout=60)
    victim = server.succeed("docker ps -q --filter label=berth.app=demo | head -n1").strip()
    server.succeed("(for i in $(seq 1 300); do curl -s -o /dev/null -w '%{http_code}\\n' -H 'Host: demo.test' http://127.0.0.1/; sleep 0.05; done) > /tmp/codes &")
    server.succeed(f"kill -9 $(docker inspect -f '{{{{.State.Pid}}}}' {victim})")
    server.wait_until_succeeds("test $(wc -l < /tmp/codes) -ge 300", timeout=120)
    server.succeed("test $(grep -vc '^200$' /tmp/codes) -eq 0")
    server.wait_until_succeeds(f"docker inspect -f '{{{{.RestartCount}}}}' {victim} | grep -qv '^0$'", timeout=60)
    server.wait_until_succeeds(api("/v1/stats") + " | grep -o '\"health\":\"up\"' | wc -l | grep -qx 2", timeout=60)
  '';
}
