"""Tandem's services: the registry, the matcher, and what wires them together."""
