"""Client side, encrypted: DoT and DoH servers for the home network (RFC 7858, RFC 8484).

The plain UDP/TCP listeners are still in stubby_py/listener.py; DoT is its TCP listener over TLS.
"""
