"""Adapters from other sources into the native schema."""
