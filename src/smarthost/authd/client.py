"""What the SMTP server calls to check credentials: any saslauthd socket (ours or Cyrus's) and any
Dovecot auth socket (ours or a real Dovecot's).

Nothing here raises and nothing here succeeds by accident: a missing socket, a daemon that does
not answer within ``timeout`` or answers garbage gives ``TEMPFAIL``, with a reason that names the
exact socket path (the classic trap is a chrooted smtpd resolving the path inside its chroot).
The SMTP server turns ``TEMPFAIL`` into ``454 4.7.0 Temporary authentication failure``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from smarthost.authd import dovecot, saslauthd


class AuthStatus(enum.Enum):
    OK = "OK"
    NO = "NO"
    TEMPFAIL = "TEMPFAIL"
    CONTINUE = "CONTINUE"  # Dovecot only: ``challenge`` holds the server's next challenge


@dataclass(frozen=True)
class AuthResult:
    status: AuthStatus
    reason: str = ""
    user: str = ""  # Dovecot: the user name the server authenticated
    challenge: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


def _tempfail(what: str, path: str | Path, error: BaseException | str) -> AuthResult:
    if isinstance(error, TimeoutError):
        detail = "no answer in time"
    elif isinstance(error, OSError):
        detail = error.strerror or type(error).__name__
    else:
        detail = str(error)
    return AuthResult(AuthStatus.TEMPFAIL, f"{what} {path}: {detail}")


async def saslauthd_check(
    socket_path: str | Path, login: str, password: str, service: str, realm: str, timeout: float = 5.0
) -> AuthResult:
    """Ask the saslauthd at ``socket_path`` (e.g. ``/var/run/saslauthd/mux``) about one login, on
    a connection of its own."""
    return await SaslauthdClient(socket_path, timeout=timeout, keep=0).check(login, password, service, realm)


class SaslauthdClient:
    """Checks logins against one saslauthd socket, one request at a time per connection, keeping
    up to ``keep`` idle connections for the next checks.

    Cyrus's saslauthd answers one request per connection and closes it; ``smarthost authd``
    keeps it open for the next request, which spares a ``connect`` (and the daemon an
    ``accept``) per AUTH. A kept connection that the daemon has closed meanwhile is noticed
    before use (its end already arrived) or, in a race, by its end arriving before any byte of
    the answer; the request then goes once more over a new connection. That is safe: a daemon
    that closed without answering has not acted on the request.
    """

    def __init__(self, socket_path: str | Path, *, timeout: float = 5.0, keep: int = 16) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.keep = keep
        self._idle: list[_SaslauthdProtocol] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the idle connections belong to

    async def check(self, login: str, password: str, service: str, realm: str) -> AuthResult:
        try:
            request = saslauthd.encode_request(login, password, service, realm)
        except ValueError as e:
            return AuthResult(AuthStatus.NO, str(e))  # a daemon would refuse it too: a definite no
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._idle.clear()  # made under another loop (e.g. a test's earlier asyncio.run)
            self._loop = loop
        connection = None
        response = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    connection = self._take_idle()
                    reused = connection is not None
                    if connection is None:
                        _, connection = await loop.create_unix_connection(_SaslauthdProtocol, str(self.socket_path))
                    response = await connection.ask(request)
                    if response is not None:
                        break
                    connection.close()
                    connection = None
                    if not reused:
                        return _tempfail("saslauthd", self.socket_path, "connection closed without an answer")
        except (OSError, TimeoutError) as e:
            return _tempfail("cannot reach saslauthd at", self.socket_path, e)
        except saslauthd.ProtocolError as e:
            return _tempfail("saslauthd", self.socket_path, f"garbled answer ({e})")
        finally:
            if connection is not None:  # kept only after a whole answer: a late one never meets the next request
                if response is not None and connection.reusable() and len(self._idle) < self.keep:
                    self._idle.append(connection)
                else:
                    connection.close()
        if response.ok:
            return AuthResult(AuthStatus.OK, response.text)
        return AuthResult(AuthStatus.NO, response.text or "authentication failed")

    def _take_idle(self) -> _SaslauthdProtocol | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None


class _SaslauthdProtocol(asyncio.Protocol):
    """One connection to a saslauthd: ``ask(request)`` sends it and waits for the answer (None
    when the daemon closes the connection before sending any of it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._decoder: saslauthd.ResponseDecoder | None = None
        self._waiter: asyncio.Future | None = None
        self._ended = False  # the daemon closed its side, or sent what nobody asked for
        self._answered_bytes = 0  # of the answer being waited for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def ask(self, request: bytes) -> saslauthd.Response | None:
        assert self.transport is not None and self._waiter is None
        self._decoder = saslauthd.ResponseDecoder()
        self._answered_bytes = 0
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self._decoder = None

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._decoder is None:
            self._ended = True  # bytes nobody asked for: never use this connection again
            return
        self._answered_bytes += len(data)
        try:
            response = self._decoder.feed(data)
        except saslauthd.ProtocolError as e:
            self._ended = True
            waiter.set_exception(e)
            return
        if response is not None:
            waiter.set_result(response)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        self._ended = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._answered_bytes:  # the daemon may have acted on the request: no second try
                waiter.set_exception(saslauthd.ProtocolError("the answer was cut short"))
            else:
                waiter.set_result(None)

    def reusable(self) -> bool:
        return not self._ended and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self._ended = True
        if self.transport is not None:
            self.transport.close()


class DovecotAuthClient:
    """A client of the Dovecot auth socket at ``socket_path`` (``smtpd_sasl_type = dovecot``).

    ``await mechanisms()`` lists what the server offers (cached after the first handshake).
    ``await start(mechanism, initial_response)`` begins one authentication on its own connection
    and returns a ``DovecotExchange``, whose ``result`` is the server's first answer; while that
    is ``CONTINUE``, relay ``result.challenge`` to the SMTP client and pass its answer to
    ``await exchange.step(data)``. Close the exchange when done (or use ``async with``).
    """

    def __init__(self, socket_path: str | Path, *, timeout: float = 5.0, service: str = "smtp") -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.service = service
        self._mechanisms: list[dovecot.Mechanism] | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"DovecotAuthClient({str(self.socket_path)!r})"

    async def mechanisms(self) -> list[dovecot.Mechanism] | AuthResult:
        """The server's mechanisms, or a ``TEMPFAIL`` result when it can not be reached."""
        if self._mechanisms is None:
            exchange = DovecotExchange(self)
            try:
                failure = await exchange._connect()
            finally:
                await exchange.aclose()
            if failure is not None:
                return failure
        return list(self._mechanisms or [])

    async def start(
        self,
        mechanism: str,
        initial_response: bytes | None = None,
        *,
        secured: bool = False,
        local_ip: str = "",
        remote_ip: str = "",
    ) -> DovecotExchange:
        exchange = DovecotExchange(self)
        failure = await exchange._connect()
        if failure is None:
            request = exchange._codec.auth(
                exchange.id, mechanism, initial_response,
                service=self.service, secured=secured, local_ip=local_ip, remote_ip=remote_ip,
            )
            failure = await exchange._send(request)
        if failure is not None:
            exchange.result = failure
            await exchange.aclose()
        return exchange


class DovecotExchange:
    """One authentication against a Dovecot auth server; see ``DovecotAuthClient``."""

    def __init__(self, client: DovecotAuthClient) -> None:
        self.client = client
        self.id = str(next(client._ids))
        self.result = AuthResult(AuthStatus.TEMPFAIL, "not started")
        self._codec = dovecot.DovecotClient(os.getpid())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> DovecotExchange:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def step(self, data: bytes) -> AuthResult:
        """Answer the last challenge with ``data``; returns the server's next answer."""
        if self.result.status is not AuthStatus.CONTINUE or self._writer is None:
            return AuthResult(AuthStatus.TEMPFAIL, "no authentication in progress")
        failure = await self._send(self._codec.cont(self.id, data))
        if failure is not None:
            self.result = failure
            await self.aclose()
        return self.result

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _fail(self, error: BaseException | str) -> AuthResult:
        return _tempfail("dovecot auth server", self.client.socket_path, error)

    async def _read_events(self) -> list:
        assert self._reader is not None
        data = await self._reader.read(65536)
        if not data:
            raise ConnectionResetError(0, "connection closed")
        return self._codec.feed(data)

    async def _connect(self) -> AuthResult | None:
        try:
            async with asyncio.timeout(self.client.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.client.socket_path))
                self._writer.write(self._codec.hello())
                await self._writer.drain()
                while True:
                    for event in await self._read_events():
                        if isinstance(event, dovecot.HandshakeDone):
                            self.client._mechanisms = event.mechanisms
                            return None
                        return self._fail("answer before the handshake ended")
        except (OSError, TimeoutError) as e:
            return _tempfail("cannot reach dovecot auth server at", self.client.socket_path, e)
        except dovecot.ProtocolError as e:
            return self._fail(f"garbled handshake ({e})")

    async def _send(self, line: bytes) -> AuthResult | None:
        assert self._writer is not None
        try:
            async with asyncio.timeout(self.client.timeout):
                self._writer.write(line)
                await self._writer.drain()
                while True:
                    for event in await self._read_events():
                        if getattr(event, "id", None) != self.id:
                            return self._fail("answer to another request")
                        self.result = _result(event)
                        if self.result.status is not AuthStatus.CONTINUE:
                            self._writer.close()  # the exchange is over
                            self._writer = None
                        return None
        except (OSError, TimeoutError) as e:
            return self._fail(e)
        except dovecot.ProtocolError as e:
            return self._fail(f"garbled answer ({e})")


def _result(event: dovecot.AuthOk | dovecot.AuthChallenge | dovecot.AuthFail) -> AuthResult:
    if isinstance(event, dovecot.AuthOk):
        return AuthResult(AuthStatus.OK, user=event.user)
    if isinstance(event, dovecot.AuthChallenge):
        return AuthResult(AuthStatus.CONTINUE, challenge=event.data)
    status = AuthStatus.TEMPFAIL if event.temporary else AuthStatus.NO
    return AuthResult(status, event.reason or "authentication failed")
