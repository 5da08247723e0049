"""The bundled member network of "Engagierte Stadt" and the demo built on it.

``members.csv`` names the real members (see ``ATTRIBUTION.md``); :mod:`services.demo.network`
turns it into valid member registrations, filling in deterministically, and marking as
estimated, whatever the public sources do not say.
"""
