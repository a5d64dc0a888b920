"""Kernel TLS: where the kernel offers it, OpenSSL hands a connection's record layer to the kernel.

Then the encryption of the bulk bytes happens in the kernel (``sendfile``/``splice`` become possible,
and a process could be given the socket itself). Debian's OpenSSL 3 is built with it; whether the
*kernel* has it (``CONFIG_TLS``, a module on stock distribution kernels) is probed once here, at agent
start, and reported in ``GET /1.0`` (``environment.data_link.kernel_tls``) and ``orch info REMOTE:``.
Where it is missing OpenSSL silently stays in user space, so asking is always safe.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

#: ``SSL_OP_ENABLE_KTLS`` (``ssl.OP_ENABLE_KTLS`` from Python 3.12)
OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 1 << 3)
_ULPS = Path("/proc/sys/net/ipv4/tcp_available_ulp")


@functools.cache
def available() -> bool:
    """Whether this kernel can take TLS connections (its TCP offers the ``tls`` upper-layer protocol)."""
    try:
        return "tls" in _ULPS.read_text().split()
    except OSError:
        return False


def enable(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Ask OpenSSL for kernel TLS on ``ctx``'s connections where the kernel has it."""
    if available():
        ctx.options |= OP_ENABLE_KTLS
    return ctx
