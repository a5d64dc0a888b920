"""Images: LXD unified tarballs (``metadata.yaml`` + ``rootfs/``), validated, stored and unpacked.

``tarball.py`` inspects and safely extracts one archive; ``store.py`` keeps the imported images, their
aliases and an unpacked rootfs volume per image that containers are cloned from.
"""
