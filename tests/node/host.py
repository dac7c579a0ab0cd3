"""The Debian packages that the real node and its image build need (standard library only, so
that CI can install them before anything else): `python3 -m tests.node.host` as root."""

from __future__ import annotations

import os
import subprocess
import sys

#: Building the images daemonless (tests/node/images.py).
IMAGE_PACKAGES = ("buildah", "mmdebstrap", "uidmap", "fuse-overlayfs")
#: Running the node (tests/node/node.py); gcc and libc6-dev build the pause image.
NODE_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "nftables",
                 "conntrack", "iproute2", "gcc", "libc6-dev")


def apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                    *IMAGE_PACKAGES, *NODE_PACKAGES], check=True, env=env)


if __name__ == "__main__":
    apt_install()
    sys.exit(0)
