"""Fault injection: the distributed stack under crashes, pauses and outages."""
