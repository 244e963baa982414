"""``store-gateway demo``: a whole simulated store on this machine.

Real Mosquitto brokers (the store's and HQ's), the daemon as its own process, a
POS lane on a real pty, shoppers on the Pi's replayed radio and on satellites
over MQTT, and HQ cut off for a while: ``store.run_demo`` drives it and prints
the summary. ``shoppers``, ``pos`` and ``decisions`` are the parts of the store
it plays. Not part of the daemon: nothing under ``gateway/`` but the CLI imports it.
"""

from __future__ import annotations

from gateway.demo.store import run_demo

__all__ = ["run_demo"]
