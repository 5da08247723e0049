"""The matcher's domain: members, scores, the joint assignment and the proposal lifecycle.

Plain Python, numpy, scipy and networkx only: no broker, HTTP or database code lives here.
"""
