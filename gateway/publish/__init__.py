"""Publish: the wire format, the store broker, the HQ link and the durable outbox between them."""
