#!/usr/bin/env python3
"""Runs a NixOS VM test's final test script (as nix/eval evaluated it) against stand-in
machines that record every shell command instead of running it, then checks those commands
the way the NixOS test driver would need them:

- every `curl` has exactly one URL, an http(s) URL, and calls to the API (port 9922) carry
  the /v1/... path in that URL (a path given as a separate word is a second URL: curl fetches
  `/` and then fails on the bare path), with a method and path the API has (src/api/openapi.json);
- every command that puts something in the background (`cmd &`) closes stdout for it:
  the driver runs `bash -c CMD | base64` and reads until stdout is closed, so a background
  process that keeps the pipe open makes succeed() hang (the driver's docs for execute());
- the script passes pyflakes with the driver's names as builtins (the driver's lint step);
- the same checks on the shell scripts the nodes install (`NAME:script` entries), since the
  test runs them under succeed().

Also reports the `failures` nix/eval found and runs `berthd check-config` on every berthd.yaml
the evaluation rendered. Usage (scripts/check-nix.sh): driver_check.py BERTHD DIR ITEM...
with DIR/ITEM.json the result of `nix-instantiate --eval --strict --json nix/eval -A ITEM`.
"""
import contextlib
import json
import os
import re
import subprocess
import sys

# curl options that take a value (the ones in curl's --help that the tests could use).
CURL_ARG_OPTS = {
    "-H", "--header", "-X", "--request", "-o", "--output", "-w", "--write-out", "-d", "--data",
    "--data-binary", "--data-raw", "--data-urlencode", "--json", "--cacert", "--capath",
    "--cert", "--key", "--resolve", "--connect-to", "-u", "--user", "-m", "--max-time",
    "--connect-timeout", "-A", "--user-agent", "-e", "--referer", "-F", "--form", "--retry",
    "--retry-delay", "--retry-max-time", "-T", "--upload-file", "--unix-socket", "-b",
    "--cookie", "-c", "--cookie-jar", "-x", "--proxy", "--url", "-K", "--config", "-r",
    "--range", "-z", "--time-cond", "--interface", "--limit-rate", "-Y", "--speed-limit",
    "-y", "--speed-time", "--max-redirs", "--trace", "--trace-ascii", "--stderr", "-D",
    "--dump-header", "--noproxy", "--cert-type", "--key-type", "--pass", "--tls-max",
    "--ciphers", "--http2-prior-knowledge-ignored",
}
SEPARATORS = {";", "&&", "||", "|", "&", "\n", "(", ")", ";;", "|&"}
KEYWORDS = {"do", "then", "else", "elif", "!", "time", "{", "}", "done", "fi", "while", "until", "if"}
STDOUT_REDIRECTS = {">", ">>", ">|", ">&", "&>", "&>>"}

API_PORT = "9922"
# The API's operations, from the OpenAPI document berthd serves: {(method, path regex)}.
API_OPERATIONS = set()


def load_api(path):
    doc = json.load(open(path))
    for p, ops in doc["paths"].items():
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"
        for method in ops:
            if method != "parameters":
                API_OPERATIONS.add((method.upper(), rx))


OPERATORS = ["&>>", "&&", "||", ";;", "|&", "&>", ">>", ">|", ">&", "<<", "<&", "$(",
             ";", "&", "|", "(", ")", "<", ">", "\n"]


def tokens(cmd):
    """Shell words and operators (quotes removed; enough shell for test commands)."""
    out = []
    word = None
    i = 0
    n = len(cmd)
    while i < n:
        c = cmd[i]
        if c in " \t\r":
            if word is not None:
                out.append(word)
                word = None
            i += 1
        elif c == "#" and word is None:
            while i < n and cmd[i] != "\n":
                i += 1
        elif c == "\\":
            word = (word or "") + cmd[i + 1:i + 2]
            i += 2
        elif c == "'":
            j = cmd.index("'", i + 1)
            word = (word or "") + cmd[i + 1:j]
            i = j + 1
        elif c == '"':
            j = i + 1
            buf = ""
            while cmd[j] != '"':
                if cmd[j] == "\\" and cmd[j + 1] in '"\\$`':
                    j += 1
                buf += cmd[j]
                j += 1
            word = (word or "") + buf
            i = j + 1
        else:
            op = next((o for o in OPERATORS if cmd.startswith(o, i)), None)
            if op is None:
                word = (word or "") + c
                i += 1
            else:
                if word is not None:
                    out.append(word)
                    word = None
                out.append("(" if op == "$(" else op)
                i += len(op)
    if word is not None:
        out.append(word)
    return out


def simple_commands(toks):
    """Split a token list into simple commands (argument lists), dropping shell keywords."""
    cmd = []
    for t in toks:
        if t in SEPARATORS:
            if cmd:
                yield cmd
            cmd = []
        elif not cmd and t in KEYWORDS:
            continue
        else:
            cmd.append(t)
    if cmd:
        yield cmd


def curl_findings(cmd):
    found = []
    for argv in simple_commands(tokens(cmd)):
        if argv[0] != "curl":
            continue
        urls = []
        method = None
        has_data = False
        i = 1
        while i < len(argv):
            a = argv[i]
            if a in CURL_ARG_OPTS:
                if a in ("-X", "--request"):
                    method = argv[i + 1] if i + 1 < len(argv) else ""
                if a in ("-d", "--data", "--data-binary", "--data-raw", "--data-urlencode", "--json", "-F", "--form"):
                    has_data = True
                if a == "--url":
                    urls.append(argv[i + 1] if i + 1 < len(argv) else "")
                i += 2
                continue
            if a.startswith("--") and "=" in a:
                i += 1
                continue
            if a.startswith("-") and len(a) > 1:
                # combined short flags (-sf) or an option glued to its value (-HX: y)
                i += 1
                continue
            if a in STDOUT_REDIRECTS or a in {"<", "2"}:
                i += 2
                continue
            urls.append(a)
            i += 1
        line = " ".join(argv)
        if len(urls) != 1:
            found.append(f"curl with {len(urls)} URLs {urls}: {line}")
            continue
        url = urls[0]
        m = re.match(r"^https?://([^/:]+|\[[^\]]+\])(:(\d+))?(/.*)?$", url)
        if not m:
            found.append(f"curl URL {url!r} is not an http(s) URL: {line}")
        elif m.group(3) == API_PORT:
            path = (m.group(4) or "/").split("?")[0]
            method = method or ("POST" if has_data else "GET")
            if not path.startswith("/v1/"):
                found.append(f"curl to the API without a /v1/ path ({url}): {line}")
            elif API_OPERATIONS and not any(m_ == method and re.match(rx, path) for m_, rx in API_OPERATIONS):
                found.append(f"curl calls {method} {path}, which the API (src/api/openapi.json) does not have: {line}")
    return found


def background_findings(cmd):
    """Background jobs whose stdout is still the driver's pipe."""
    toks = tokens(cmd)
    found = []
    for i, t in enumerate(toks):
        if t != "&":
            continue
        # the job: back to the previous separator at the same depth
        depth = 0
        start = i
        j = i - 1
        while j >= 0:
            tj = toks[j]
            if tj == ")":
                depth += 1
            elif tj == "(":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and tj in SEPARATORS:
                break
            start = j
            j -= 1
        job = toks[start:i]
        # only a redirect at the job's top level covers the whole job
        depth = 0
        redirected = False
        for k, tk in enumerate(job):
            if tk == "(":
                depth += 1
            elif tk == ")":
                depth -= 1
            elif depth == 0 and tk in STDOUT_REDIRECTS:
                fd = job[k - 1] if k > 0 else ""
                if not (fd.isdigit() and fd != "1"):
                    redirected = True
        # or a redirect on an enclosing ( ... ) group
        j = start - 1
        while not redirected and j >= 0 and toks[j] == "(":
            depth = 0
            k = j
            while k < len(toks):
                if toks[k] == "(":
                    depth += 1
                elif toks[k] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            k += 1
            while k < len(toks) and toks[k] not in SEPARATORS:
                if toks[k] in STDOUT_REDIRECTS:
                    fd = toks[k - 1]
                    if not (fd.isdigit() and fd != "1"):
                        redirected = True
                k += 1
            # the group's own start: walk out one more level
            depth = 0
            j2 = j - 1
            while j2 >= 0:
                if toks[j2] == ")":
                    depth += 1
                elif toks[j2] == "(":
                    if depth == 0:
                        break
                    depth -= 1
                elif depth == 0 and toks[j2] in SEPARATORS:
                    j2 = -1
                    break
                j2 -= 1
            j = j2
        if not redirected:
            found.append(f"backgrounds `{' '.join(job)}` without closing stdout (succeed() would wait for it forever)")
    return found


class Machine:
    def __init__(self, name, log):
        self.name = name
        self.log = log

    def _run(self, kind, cmd):
        self.log.append((self.name, kind, cmd))
        if "token create" in cmd:
            return "berth_mocktoken\n"
        if cmd.startswith("docker ps"):
            return "0123456789ab\n"
        if "x509 -noout -serial" in cmd:
            return "serial=01\n"
        return ""

    def succeed(self, *cmds, timeout=None):
        return "".join(self._run("succeed", c) for c in cmds)

    def fail(self, *cmds, timeout=None):
        for c in cmds:
            self._run("fail", c)
        return ""

    def execute(self, cmd, check_return=True, check_output=True, timeout=900):
        return 0, self._run("execute", cmd)

    def wait_until_succeeds(self, cmd, timeout=900):
        return self._run("wait_until_succeeds", cmd)

    def wait_until_fails(self, cmd, timeout=900):
        return self._run("wait_until_fails", cmd)

    def wait_for_unit(self, unit, user=None, timeout=900):
        self.log.append((self.name, "wait_for_unit", unit))

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self.log.append((self.name, "wait_for_open_port", str(port)))

    def start(self, allow_reboot=False):
        self.log.append((self.name, "start", ""))

    def shutdown(self):
        self.log.append((self.name, "shutdown", ""))


@contextlib.contextmanager
def subtest(name):
    yield


# The names the NixOS test driver puts in a test script's scope besides the machines
# (nixos/lib/test-driver: the driver's test symbols); pyflakes gets them as builtins, as the
# driver's lint step does.
DRIVER_SYMBOLS = [
    "start_all", "test_script", "machines", "vlans", "driver", "log", "os", "create_machine",
    "subtest", "run_tests", "join_all", "retry", "serial_stdout_off", "serial_stdout_on",
    "polling_condition", "Machine", "t",
]


def pyflakes_findings(test, outdir, what):
    """The lint step of the NixOS test driver (pyflakes, skipLint = false)."""
    cmd = os.environ.get("PYFLAKES", "").split()
    if not cmd:
        print(f"    skipped: pyflakes on {what} (no pyflakes; set PYFLAKES)")
        return []
    path = os.path.join(outdir, re.sub(r"[^A-Za-z0-9_.-]", "_", what) + ".py")
    with open(path, "w") as f:
        f.write(test["script"])
    env = dict(os.environ, PYFLAKES_BUILTINS=",".join(test["nodes"] + DRIVER_SYMBOLS))
    r = subprocess.run(cmd + [path], capture_output=True, text=True, env=env)
    print(f"    pyflakes: {'clean' if r.returncode == 0 else 'findings'}")
    return [f"pyflakes: {line}" for line in (r.stdout + r.stderr).splitlines() if line.strip()]


def check_test(test):
    """Findings for one VM test on one system ({"script", "nodes", "scripts"})."""
    log = []
    machines = {n: Machine(n, log) for n in test["nodes"]}
    env = dict(machines)
    env.update(machines=list(machines.values()), start_all=lambda: None, subtest=subtest)
    exec(compile(test["script"], "testScript", "exec"), env)  # against recording machines
    findings = []
    shell_runs = {"succeed", "fail", "execute", "wait_until_succeeds", "wait_until_fails"}
    for node, kind, cmd in log:
        print(f"    {node}.{kind}({cmd!r})")
        if kind in shell_runs:
            findings += [f"{node}.{kind}: {f}" for f in curl_findings(cmd) + background_findings(cmd)]
    if not any(kind in shell_runs for _, kind, _ in log):
        findings.append("the test script ran no shell command")
    for name, text in sorted(test.get("scripts", {}).items()):
        print(f"    script {name}: {len(text.splitlines())} lines")
        findings += [f"script {name}: {f}" for f in curl_findings(text) + background_findings(text)]
    return findings


def main():
    """driver_check.py BERTHD DIR ITEM...: DIR/ITEM.json are nix/eval's results."""
    berthd, outdir, items = sys.argv[1], sys.argv[2], sys.argv[3:]
    load_api(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "api", "openapi.json"))
    failed = False

    def report(what, findings):
        nonlocal failed
        for f in findings:
            print(f"FAILED {what}: {f}")
        failed = failed or bool(findings)
        if not findings:
            print(f"ok {what}")

    def check_config(what, rendered):
        path = f"{outdir}/{re.sub(r'[^A-Za-z0-9_.-]', '_', what)}.yaml"
        with open(path, "w") as f:
            f.write(rendered)
        r = subprocess.run([berthd, "check-config", path], capture_output=True, text=True)
        report(f"berthd check-config of the berthd.yaml {what} renders ({path})",
               [] if r.returncode == 0 else [(r.stdout + r.stderr).strip()])

    for item in items:
        try:
            res = json.load(open(f"{outdir}/{item}.json"))
        except (OSError, ValueError):
            continue  # the evaluation failed; check-nix.sh has reported it
        if item == "pin":
            print(f"  flake.nix pins {res['url']}: rustc {res['rustc']}; Cargo.toml rust-version {res['rustVersion']}")
            report("pinned nixpkgs release", res["failures"])
        elif item == "flake":
            print(f"  images: {json.dumps(res['images'])}")
            print(f"  checks: {json.dumps(res['checks'])}")
            report("flake outputs", res["failures"])
            for name, rendered in sorted(res["appliance"].items()):
                check_config(f"nixosConfigurations.{name}", rendered)
        elif item == "module":
            report("NixOS module", res["failures"])
            for name, rendered in sorted(res["configs"].items()):
                check_config(f"module scenario {name}", rendered)
        else:
            for system, test in sorted(res.items()):
                what = f"checks.{system}.{item}"
                print(f"  {what}: test script, as the driver would run it:")
                report(what, test["failures"] + check_test(test) + pyflakes_findings(test, outdir, what))
                for node, rendered in sorted(test["configs"].items()):
                    check_config(f"{what} node {node}", rendered)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
