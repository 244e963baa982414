"""Sensing: adapters that turn radios, satellites and serial lanes into events."""
