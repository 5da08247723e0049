"""Tandem's public contracts: the member model, the topic vocabulary and the event schemas;
and `geo`, the one great-circle distance every service measures with."""
