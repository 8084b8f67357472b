"""smarthost: an authenticated, encrypted mail relay that reads Postfix's configuration."""

__version__ = "0.1.0"
