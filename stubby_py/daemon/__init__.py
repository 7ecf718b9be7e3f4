"""The await ring: the running daemon. The query path, upstream groups, the validation edge,
runtime (config assembly, reload, state files), control socket, metrics, netwatch, privileges,
query log."""
