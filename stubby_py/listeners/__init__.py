"""Client side, encrypted: DoT, DoH and DoQ servers for the home network (RFC 7858, 8484, 9250).

The plain UDP/TCP listeners are still in stubby_py/listener.py; DoT is its TCP listener over TLS.
"""
