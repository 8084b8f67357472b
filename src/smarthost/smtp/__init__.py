"""Pure (sans-I/O) SMTP: replies, addresses, commands, DATA framing and the server core.

Nothing in this package does I/O or reads the clock; tests/protocol/test_purity.py
checks the imports.
"""
