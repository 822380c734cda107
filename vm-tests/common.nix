# Shared pieces of the NixOS VM tests: a tiny busybox httpd image built inside the VM (no
# registry), and the machine running berthd. The helper scripts are plain let-bindings, not an
# overlay: runNixOSTest hands every node its own pkgs and makes `nixpkgs.*` read-only.
{ berthModule }:
{ pkgs, ... }:
let
  berth-test-image = pkgs.writeShellScriptBin "berth-test-image" ''
    # usage: berth-test-image TAG BODY — imports a 1 MB busybox httpd image serving BODY
    set -eu
    d=$(mktemp -d); mkdir -p $d/bin $d/www
    cp ${pkgs.pkgsStatic.busybox}/bin/busybox $d/bin/
    ln -s busybox $d/bin/sh; ln -s busybox $d/bin/httpd
    echo "$2" > $d/www/index.html
    tar -C $d -c . | docker import -c 'CMD ["/bin/httpd","-f","-p","8080","-h","/www"]' - "$1"
  '';
  pebble-setup-and-start = pkgs.writeShellScriptBin "pebble-setup-and-start" ''
    # Starts pebble (HTTP-01 validation against berthd on :80, 2-minute certs) and
    # pebble-challtestsrv (every name resolves to 127.0.0.1); writes the roots berthd and
    # curl trust under /var/lib/pebble.
    set -eu
    PATH=${pkgs.lib.makeBinPath [ pkgs.pebble pkgs.openssl pkgs.curl pkgs.coreutils ]}:$PATH
    d=/var/lib/pebble; mkdir -p $d; cd $d
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pebble-ca -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout wfe.key -out wfe.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext
    openssl x509 -req -in wfe.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out wfe.pem
    cat > config.json <<JSON
    {"pebble":{"listenAddress":"127.0.0.1:14000","managementListenAddress":"127.0.0.1:15000",
     "certificate":"$d/wfe.pem","privateKey":"$d/wfe.key","httpPort":80,"tlsPort":443,
     "ocspResponderURL":"","externalAccountBindingRequired":false,"certificateValidityPeriod":120}}
    JSON
    (pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 127.0.0.1:8053 -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055 >/var/log/challtestsrv.log 2>&1 &)
    (PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 pebble -config config.json -dnsserver 127.0.0.1:8053 >/var/log/pebble.log 2>&1 &)
    for i in $(seq 1 60); do curl -sf --cacert ca.pem https://127.0.0.1:15000/roots/0 -o root.pem && break; sleep 1; done
    test -s root.pem
    systemctl reload berthd
  '';
in
{
  imports = [ berthModule ];
  services.berth.enable = true;
  services.berth.settings.log.level = "info";
  virtualisation.memorySize = 2048;
  virtualisation.diskSize = 4096;
  environment.systemPackages = [ pkgs.curl pkgs.busybox berth-test-image pebble-setup-and-start ];
}
