"""The HTTP front end: OpenAI-compatible API, session API, web page, health and metrics."""
