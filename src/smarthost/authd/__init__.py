"""The auth daemon and its clients: ``smarthost authd`` answers password checks for the SMTP
server (and for real Cyrus SASL clients such as Postfix and ``testsaslauthd``) so that the SMTP
workers never read password hashes themselves (DESIGN.md principle 9).

- ``saslauthd`` and ``dovecot``: pure wire codecs of the two protocols spoken on unix sockets;
- ``passwords``: hash verification and creation; ``userdb``: smarthost's own user database;
- ``backends``: where passwords are checked (``pam``, ``shadow``, ``passwd``, ``userdb``);
- ``cache``: the optional credential cache; ``daemon``: the asyncio server;
- ``client``: what the SMTP server calls (``SaslauthdClient``, which keeps connections; ``saslauthd_check`` for one check; ``DovecotAuthClient``).
"""
