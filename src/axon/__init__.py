"""Axon: a production chat-serving platform for large language models."""

__version__ = "0.1.0"
