"""Engine adapters behind one interface (``base.Engine``); each backend in its own module,
imported lazily so that a missing optional dependency fails with a message naming the fix."""
