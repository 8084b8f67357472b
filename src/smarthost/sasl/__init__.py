"""SASL (RFC 4422) for SMTP AUTH: pure mechanism step objects, server and client side.

No I/O here (DESIGN.md principle 1): where a mechanism needs the outside
world (a password check, a stored SCRAM verifier, a secret) it returns a
request object and the shell answers it.  Randomness comes in through the
contexts.  See :mod:`.mechanisms` (server), :mod:`.client`, :mod:`.policy`
(security options, filters, the client's choice), :mod:`.scram` and :mod:`.cram`
(CRAM-MD5 secrets that are not the password).
"""

from .client import CLIENT_MECHANISMS, ClientContext, ClientMechanism, SaslError, client_mechanism
from .cram import CramSecret
from .mechanisms import (
    SERVER_MECHANISMS,
    Challenge,
    CheckPassword,
    Failure,
    NeedScramCredentials,
    NeedSecret,
    SaslStateError,
    ServerContext,
    ServerMechanism,
    Step,
    Success,
    server_mechanism,
)
from .policy import filter_mechanisms, meets, select_client_mechanism
from .scram import ScramCredentials, scram_verifier

__all__ = [
    "CLIENT_MECHANISMS",
    "SERVER_MECHANISMS",
    "Challenge",
    "CheckPassword",
    "ClientContext",
    "CramSecret",
    "ClientMechanism",
    "Failure",
    "NeedScramCredentials",
    "NeedSecret",
    "SaslError",
    "SaslStateError",
    "ScramCredentials",
    "ServerContext",
    "ServerMechanism",
    "Step",
    "Success",
    "client_mechanism",
    "filter_mechanisms",
    "meets",
    "scram_verifier",
    "select_client_mechanism",
    "server_mechanism",
]
