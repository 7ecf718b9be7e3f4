"""stubby_py: an encrypted-transport DNS stub forwarder (DoT, DoH, DoQ)."""

__version__ = "0.1.0"
