"""The staff web page: proposals, decisions, the network at a glance, collegial advice."""
