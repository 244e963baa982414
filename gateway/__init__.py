"""store-gateway: the in-store edge daemon (sensing, identity, decision, publish, storage)."""

__version__ = "0.1.0"
