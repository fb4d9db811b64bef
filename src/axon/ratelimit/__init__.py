"""The rate limiter seam: counters every gateway replica shares. ``memory`` and ``redis``."""
