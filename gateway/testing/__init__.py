"""Real-part harnesses shipped with the package: private Mosquitto brokers and an HQ receiver.

Used by the tests, ``store-gateway demo`` and ``bench/`` alike (the structlog
way: the test doubles live in the package, next to what they exercise).
"""
