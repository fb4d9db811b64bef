"""Who is calling: API keys (stored hashed), JWTs from an identity provider, and the one
authenticator that turns either into a ``Principal``."""
