"""Tandem's public contracts: the member model, the topic vocabulary and the event schemas."""
