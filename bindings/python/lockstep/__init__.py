"""Lockstep for Python: read synchronized data at memory speed.

    import lockstep
    client = lockstep.Client("http://127.0.0.1:7420", name="web-1")
    client = lockstep.Client.from_env()  # LOCKSTEP_SERVER, LOCKSTEP_TOKEN, LOCKSTEP_CACHE_DIR
    client.get("price:apple")            # -> b"1.25", or None (or get(key, default))
    client.get_str("price:apple")        # -> "1.25"
    client["price:apple"], "price:apple" in client
    with client.snapshot() as s:         # one version for a whole request
        s.get("price:apple"), s.get("promo:winter")

The wheel carries its own ``liblockstep.so``. The library is found, in order, at: the path
given as ``library=``; the environment variable ``LOCKSTEP_LIBRARY``; ``liblockstep.so`` next
to this file; the ``target/release`` and ``target/debug`` directories of the source tree this
package sits in; the system's library path (``ctypes.util.find_library``).

Failures of the background retrieval, and recoveries, are logged to the ``lockstep`` logger.
"""

from ._native import (ABI_VERSION, LockstepError, NotReady, Unauthorized, Unreachable,
                      load_library)
from ._client import Client, Snapshot

__version__ = "0.1.0"

__all__ = ["ABI_VERSION", "Client", "LockstepError", "NotReady", "Snapshot", "Unauthorized",
           "Unreachable", "__version__", "load_library"]
