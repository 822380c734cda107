#!/usr/bin/env python3
"""Writes the VM tests' app image as a `docker save` tarball, without Docker or a registry.

The image is one layer: a static busybox (from the host), `sh` and `httpd` links, and
/www/index.html saying "hello from vmtest VERSION"; CMD runs busybox httpd on :8080. The
tarball has the classic `docker save` layout (manifest.json, the image config, the layer tar,
`repositories`), which `docker load` (and so berthd's image upload) accepts. Timestamps are
fixed, so the same busybox gives the same bytes.

Usage: mkapp.py OUT.tar NAME:TAG VERSION [--busybox PATH]
"""
import argparse
import hashlib
import io
import json
import shutil
import tarfile

MTIME = 1700000000


def add_file(tar, name, data, mode):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = MTIME
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = MTIME
    tar.addfile(info)


def add_link(tar, name, target):
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    info.mtime = MTIME
    tar.addfile(info)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ref", help="NAME:TAG")
    p.add_argument("version")
    p.add_argument("--busybox", default=shutil.which("busybox"))
    a = p.parse_args()
    if not a.busybox:
        p.error("no busybox found (apt-get install busybox-static)")
    name, _, tag = a.ref.rpartition(":")
    if not name or not tag:
        p.error("ref must be NAME:TAG")
    with open(a.busybox, "rb") as f:
        busybox = f.read()

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        add_dir(layer, "bin")
        add_file(layer, "bin/busybox", busybox, 0o755)
        add_link(layer, "bin/sh", "busybox")
        add_link(layer, "bin/httpd", "busybox")
        add_dir(layer, "www")
        add_file(layer, "www/index.html", ("hello from vmtest %s\n" % a.version).encode(), 0o644)
    layer_bytes = layer_buf.getvalue()
    layer_id = hashlib.sha256(layer_bytes).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Cmd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
            "Env": ["PATH=/bin"],
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "vm-tests/qemu/mkapp.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{
        "Config": config_id + ".json",
        "RepoTags": [a.ref],
        "Layers": [layer_id + "/layer.tar"],
    }]
    with tarfile.open(a.out, mode="w", format=tarfile.PAX_FORMAT) as out:
        add_dir(out, layer_id)
        add_file(out, layer_id + "/VERSION", b"1.0", 0o644)
        add_file(out, layer_id + "/layer.tar", layer_bytes, 0o644)
        add_file(out, config_id + ".json", config_bytes, 0o644)
        add_file(out, "manifest.json", json.dumps(manifest).encode(), 0o644)
        add_file(out, "repositories", json.dumps({name: {tag: layer_id}}).encode(), 0o644)
    print("sha256:" + config_id)


if __name__ == "__main__":
    main()
