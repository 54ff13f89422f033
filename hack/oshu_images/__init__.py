"""Container images without a registry: a debootstrap Debian base, the product images
(Dockerfile.sidecar / Dockerfile.operator, unchanged, on that base) and an agent test image;
built with podman from a private configuration, cached by a hash of their inputs, and
imported into a containerd so a kubelet finds them with ``IfNotPresent``.
See docs/install.md ("Images built on this machine")."""

# Not the function ``build``: the name stays the submodule (``oshu_images.build.build()``).
from .build import IMAGES, BuiltImage, ImageError, build_all, import_into_containerd, push

__all__ = ["IMAGES", "BuiltImage", "ImageError", "build_all", "import_into_containerd", "push"]
