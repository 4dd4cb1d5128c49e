"""The local base image `remora-base:test`: a minimal Debian made here, since no image registry is reachable.

    python -m tests.docker.base_image [--rebuild]

debootstrap (Debian's package, from the same Debian mirror apt uses on this machine)
makes a bookworm `minbase` root filesystem with python3, python3-venv, iptables and
ca-certificates; `tar | docker import` turns it into an image. The Dockerfile is built on
it with `--build-arg BASE_IMAGE=remora-base:test`.

The root filesystem gets this machine's CA bundle: pip in the builder stage must trust
whatever this machine trusts (a TLS-inspecting proxy in front of the package registry has
its own CA), and the image is a test fixture, never shipped.

Made once: an existing image is reused (`--rebuild` makes it again). Takes a few minutes.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_TAG = "remora-base:test"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "iptables", "ca-certificates")
BUNDLE_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


class BaseImageError(Exception):
    """The base image cannot be made here; the message says what is missing."""


def image_exists(tag: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    return result.returncode == 0


def debian_mirror() -> str | None:
    """The Debian archive apt uses here (deb822 `URIs:` or a one-line `deb` entry), or None
    for debootstrap's own default. Read at run time so no host name lives in the project."""
    for path in APT_SOURCES:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if not uri.rstrip("/").endswith("-security"):
                return uri
    return None


def host_ca_bundle() -> Path | None:
    """The CA bundle pip uses on this machine."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), BUNDLE_IN_IMAGE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def make_rootfs(target: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed (apt-get install debootstrap)")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target)]
    mirror = debian_mirror()
    if mirror:
        argv.append(mirror)
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise BaseImageError(f"debootstrap failed ({result.returncode}):\n{tail}")
    bundle = host_ca_bundle()
    if bundle is not None:
        shutil.copyfile(bundle, target / BUNDLE_IN_IMAGE.lstrip("/"))
    # A smaller image: package lists and caches are not needed to run Python.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(target / junk, ignore_errors=True)
    (target / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def import_rootfs(rootfs: Path, tag: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    result = subprocess.run(["docker", "import", "-c", "CMD [\"/bin/bash\"]", "-", tag],
                            stdin=tar.stdout, capture_output=True, text=True)
    tar.stdout.close()
    if tar.wait() != 0 or result.returncode != 0:
        raise BaseImageError(f"docker import of {rootfs} failed: {result.stderr.strip()}")


def ensure_base_image(tag: str = BASE_TAG, *, rebuild: bool = False) -> str:
    """Make `tag` unless it exists; returns the tag."""
    if image_exists(tag) and not rebuild:
        return tag
    if os.geteuid() != 0:
        raise BaseImageError("debootstrap needs root to make the base image")
    with tempfile.TemporaryDirectory(prefix="remora-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        make_rootfs(rootfs)
        import_rootfs(rootfs, tag)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="make the image even if it exists")
    parser.add_argument("--tag", default=BASE_TAG)
    args = parser.parse_args(argv)
    try:
        print(ensure_base_image(args.tag, rebuild=args.rebuild))
    except BaseImageError as error:
        print(f"base image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
