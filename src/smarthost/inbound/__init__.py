"""The receiving side: SMTP listeners and sessions, and the restrictions they apply."""
