"""Address helpers shared by the servers the node runs (web view, metrics) and their config."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IPs (127.0.0.0/8, ::1); False for names and others."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
