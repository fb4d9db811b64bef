"""The token stream seam: per-request streams readable from any id, cancellation flags and
the completion log. ``memory`` (embedded) and ``redis`` (Redis Streams) backends."""
