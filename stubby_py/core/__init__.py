"""The pure core: wire format, EDNS, cache, routing, pool policy, local answers, replies, errors,
configuration schema. Nothing here opens a socket, reads a clock it is not given, or awaits."""
