"""A whole TLS handshake between two SSLContexts in memory (BIOs, no sockets, no threads), for
the unit tests that need to see what a real handshake agrees on."""

from __future__ import annotations

import ssl


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, *, server_hostname: str = "mx.example.test",
              session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """The client's side once the handshake is done (the server's tickets are waiting in its
    input); ssl.SSLError when either side refuses it (no shared protocol or cipher, ...)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=server_hostname, session=session)
    for _ in range(5):
        for side in (cli, srv):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
    cli.do_handshake()  # done by now, or the reason it is not
    return cli
