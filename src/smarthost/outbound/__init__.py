"""Delivery: where mail goes (routing, MX), with which credentials, and the relay client around smtp/client.py.

The modules here are pure or take their collaborators (tables, DNS resolver,
random source) as arguments, so the delivery shell stays thin and the rules
are tested without a network.
"""
