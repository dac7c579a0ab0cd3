"""A real node on this machine: images built daemonless with buildah, then a kubelet."""
