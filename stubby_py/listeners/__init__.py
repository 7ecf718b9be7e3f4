"""Client side: plain UDP/TCP (plain.py) and DoT, DoH and DoQ servers for the home network
(RFC 1035, 7766, 7858, 8484, 9250). DoT is the plain TCP listener over TLS.
"""
