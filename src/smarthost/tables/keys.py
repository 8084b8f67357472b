"""Postfix's key search orders: which keys a feature looks up, in which order, for one address.

Indexed and SQL tables are searched with several keys built from one address; the first key found
decides. Regular-expression and CIDR tables get only the whole string (the callers decide that).

- access(5), "EMAIL ADDRESS PATTERNS" and "EMAIL ADDRESS EXTENSION": ``user+ext@domain``,
  ``user@domain``, ``domain`` and its parent domains (or ``.parent`` forms), ``user+ext@``,
  ``user@``; the null sender is looked up as ``<>``.
- aliases(5), "ADDRESS EXTENSION": the local part ``user+ext``, then ``user``.
- virtual(5), "TABLE SEARCH ORDER" and "ADDRESS EXTENSION": ``user+ext@domain``,
  ``user@domain``, ``user+ext`` and ``user`` (only for the local domains), ``@domain``.

Keys are lower-cased (virtual(5) "CASE FOLDING"). The extension is split at the first
``recipient_delimiter`` character (several characters may be given, Postfix 2.11), and not at all
when that character starts the local part, for ``postmaster``, or with ``-`` for ``owner-*`` and
``*-request`` (mailing-list conventions Postfix preserves).
"""

from __future__ import annotations

__all__ = ["NULL_SENDER_KEY", "access_address_keys", "alias_keys", "domain_keys", "split_extension", "virtual_keys"]

#: The lookup key for the null sender (smtpd_null_access_lookup_key's default).
NULL_SENDER_KEY = "<>"


def split_extension(local: str, delimiters: str) -> tuple[str, str | None]:
    """``("user+ext", "+")`` -> ``("user", "+ext")``; ``(local, None)`` when there is nothing to split."""
    if not delimiters or not local or local.lower() == "postmaster":
        return local, None
    if "-" in delimiters and (local.lower().startswith("owner-") or local.lower().endswith("-request")):
        return local, None
    cut = min((i for i in (local.find(d) for d in delimiters) if i >= 0), default=-1)
    if cut <= 0:
        return local, None
    return local[:cut], local[cut:]


def domain_keys(domain: str, *, parent_matches_subdomains: bool = True) -> list[str]:
    """``sub.example.com`` -> ``sub.example.com``, ``example.com``, ``com`` (parent style, the
    default for smtpd_access_maps in parent_domain_matches_subdomains), or ``sub.example.com``,
    ``.example.com``, ``.com`` without it. An address literal ``[...]`` has no parents."""
    domain = domain.rstrip(".").lower()
    if not domain:
        return []
    if domain.startswith("["):
        return [domain]
    labels = domain.split(".")
    parents = [".".join(labels[i:]) for i in range(1, len(labels)) if labels[i]]
    return [domain] + (parents if parent_matches_subdomains else ["." + p for p in parents])


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.lower().rpartition("@")
    return (local, domain) if at else (address.lower(), "")


def access_address_keys(address: str, delimiters: str = "", *, parent_matches_subdomains: bool = True) -> list[str]:
    """access(5) keys for a sender or recipient address, most specific first."""
    if not address:
        return [NULL_SENDER_KEY]
    local, domain = _split(address)
    base, ext = split_extension(local, delimiters)
    keys = []
    if domain:
        keys.append(f"{local}@{domain}")
        if ext is not None:
            keys.append(f"{base}@{domain}")
        keys += domain_keys(domain, parent_matches_subdomains=parent_matches_subdomains)
    keys.append(f"{local}@")
    if ext is not None:
        keys.append(f"{base}@")
    return keys


def alias_keys(local: str, delimiters: str = "") -> list[str]:
    """aliases(5) keys for a local part (the domain is not part of an alias key)."""
    local = local.lower()
    base, ext = split_extension(local, delimiters)
    return [local] if ext is None else [local, base]


def virtual_keys(address: str, delimiters: str = "", *, local_domain: bool = False) -> list[str]:
    """virtual(5) keys; the bare ``user`` forms only when ``local_domain`` (the address's domain is
    $myorigin, in $mydestination, $inet_interfaces or $proxy_interfaces: the caller knows)."""
    local, domain = _split(address)
    if not domain:
        return alias_keys(local, delimiters)
    base, ext = split_extension(local, delimiters)
    keys = [f"{local}@{domain}"]
    if ext is not None:
        keys.append(f"{base}@{domain}")
    if local_domain:
        keys.append(local)
        if ext is not None:
            keys.append(base)
    keys.append(f"@{domain}")
    return keys
