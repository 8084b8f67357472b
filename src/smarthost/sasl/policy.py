"""Which SASL mechanisms may be used: security properties, mechanism filters, the client's choice.

Postfix's ``smtpd_sasl_security_options`` / ``smtp_sasl_security_options`` name
properties a mechanism must have (the Cyrus SASL ``SASL_SEC_*`` flags):

==================  ==========================================================
``noplaintext``     the password never crosses the wire as it is
``noactive``        resists active (non-dictionary) attacks
``nodictionary``    resists passive dictionary attacks
``noanonymous``     the peer is identified (not ANONYMOUS)
``mutual_auth``     the server proves its identity too
``forward_secrecy`` a later key compromise does not expose past sessions
==================  ==========================================================

The table below records which property each mechanism has (RFC 4616 PLAIN,
draft-murchison-sasl-login, RFC 2195 CRAM-MD5, RFC 5802 SCRAM, RFC 4422
App. A EXTERNAL, RFC 4505 ANONYMOUS).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_ALL = frozenset({"noplaintext", "noactive", "nodictionary", "noanonymous", "mutual_auth", "forward_secrecy"})
PROPERTIES: dict[str, frozenset[str]] = {
    "PLAIN": frozenset({"noanonymous"}),
    "LOGIN": frozenset({"noanonymous"}),
    "CRAM-MD5": frozenset({"noplaintext", "noanonymous"}),
    "DIGEST-MD5": frozenset({"noplaintext", "noanonymous", "mutual_auth"}),
    "SCRAM-SHA-1": frozenset({"noplaintext", "noactive", "noanonymous", "mutual_auth"}),
    "SCRAM-SHA-256": frozenset({"noplaintext", "noactive", "noanonymous", "mutual_auth"}),
    "EXTERNAL": _ALL,  # the identity comes from the TLS layer, no secret is exchanged
    "ANONYMOUS": frozenset({"noplaintext"}),
}

# What the relay client tries first when the server offers several.
CLIENT_PREFERENCE = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN")


def meets(mechanism: str, security_options: Iterable[str]) -> bool:
    """True if ``mechanism`` has every property named in ``security_options``."""
    required = {option.lower() for option in security_options}
    return required <= PROPERTIES.get(mechanism.upper(), frozenset())


def filter_mechanisms(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Apply a Postfix ``*_sasl_mechanism_filter`` list to ``names`` (kept in order).

    Empty ``patterns``: no filtering.  Otherwise the first pattern that matches
    decides: a name (any case) keeps the mechanism, ``!name`` drops it, and a
    ``static:`` table matches every name (``!external, static:rest`` is Postfix's
    server default).  A mechanism no pattern matches is dropped.  Other table
    types raise ValueError: resolve them before calling.
    """
    names = [name.upper() for name in names]
    if not patterns:
        return names
    for pattern in patterns:
        body = pattern[1:] if pattern.startswith("!") else pattern
        if ":" in body and not body.lower().startswith("static:"):
            raise ValueError(f"mechanism filter {pattern!r}: only names, !names and static: are supported here")
    return [name for name in names if _filter_keeps(name, patterns)]


def _filter_keeps(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if body.lower().startswith("static:") or body.upper() == name:
            return not negated
    return False


def select_client_mechanism(
    offered: Iterable[str], allowed: Sequence[str], security_options: Iterable[str]
) -> str | None:
    """The mechanism the relay client uses, or None when nothing acceptable is offered.

    ``offered``: the server's EHLO ``AUTH`` keywords; ``allowed``:
    ``smtp_sasl_mechanism_filter``; ``security_options``:
    ``smtp_sasl_security_options`` (or the TLS variant, chosen by the caller).
    """
    options = list(security_options)
    candidates = set(filter_mechanisms(offered, allowed))
    for name in CLIENT_PREFERENCE:
        if name in candidates and meets(name, options):
            return name
    return None
