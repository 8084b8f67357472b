"""Relay credentials: ``smtp_sasl_password_maps`` searched the way Postfix's smtp(8) does.

Search order (smtp(8), SASL_README; Postfix's smtp_sasl_passwd_lookup):

1. with ``smtp_sender_dependent_authentication = yes`` and a non-null sender:
   the sender address, then ``@domain``;
2. the remote host name (the MX host, or the host of ``[host]``);
3. the next hop exactly as written in ``relayhost`` / the transport:
   ``[mail.example.com]:587`` matches the key ``[mail.example.com]:587``, not
   ``[mail.example.com]``.

Each key is tried in every table before the next key.  The value is
``username:password``, split at the first colon (a password may hold colons).

Only the delivery side reads this (DESIGN.md principle 9): the password is
kept out of reprs, and errors and log lines name the key, never the value.
A :class:`smarthost.tables.TableError` propagates: the caller defers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from smarthost.tables import Table


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    key: str = ""  # the lookup key that matched, for the log and the config doctor
    table: str = ""  # the table's name (tables never put secrets in their names)


def candidate_keys(*, sender: str, host: str, nexthop: str, sender_dependent: bool) -> list[str]:
    """The keys searched, in order: what the config doctor shows for "which key would match"."""
    keys: list[str] = []
    if sender_dependent and sender:
        keys.append(sender)
        _, at, domain = sender.rpartition("@")
        if at and domain:
            keys.append("@" + domain)
    for key in (host, nexthop):
        if key and key not in keys:
            keys.append(key)
    return keys


def lookup_credentials(
    tables: Sequence[Table], *, sender: str, host: str, nexthop: str, sender_dependent: bool = False
) -> Credentials | None:
    """The credentials for this delivery, or None when no key matches.

    ``sender`` is the envelope sender ("" for ``<>``), ``host`` the name of
    the server connected to, ``nexthop`` the next hop as written
    (``NextHop.text``).
    """
    for key in candidate_keys(sender=sender, host=host, nexthop=nexthop, sender_dependent=sender_dependent):
        for table in tables:
            value = table.lookup(key)
            if value is not None:
                username, _, password = value.strip().partition(":")
                return Credentials(username, password, key, table.name)
    return None
