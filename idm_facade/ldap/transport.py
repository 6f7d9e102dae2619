"""Writing to a TCP transport without waiting for the next reactor turn."""

from __future__ import annotations

from typing import Any


def write_now(transport: Any, data: bytes, tls_active: bool = False) -> None:
    """Write ``data`` to the socket at once when nothing is queued on a plain TCP transport.

    ``transport.write`` only buffers: the bytes leave on the next reactor turn, after
    registering for writability and before unregistering again (two epoll_ctl calls and a
    loop turn per message). A small message on an idle connection fits the socket buffer, so
    it is sent here; whatever is not accepted goes through the transport as usual. Used for
    answers to clients and for requests to the upstream directory, where every turn saved
    is latency saved.
    """
    sock = getattr(transport, "socket", None)
    if (sock is not None and not tls_active and not getattr(transport, "TLS", False)
            and not transport.dataBuffer and not transport._tempDataBuffer
            and not transport.disconnecting):
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the transport notices the error itself
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)
