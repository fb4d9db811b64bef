"""Logs, metrics and trace context: what every process exposes about itself."""
