"""The network of tandems as a graph (networkx): who has already worked with whom.

Nodes are member ids, edges past or running tandems. The scoring uses it to avoid re-pairing
former partners and to favour links between parts of the network that are not yet connected.
``min_cost_flow_assignment`` solves the assignment problem a second, independent way (as a
min-cost max-flow) so that tests can cross-check ``solve_assignment``.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from services.matcher.domain.model import Tandem


def tandem_graph(tandems: Iterable[Tandem], members: Iterable[str] = ()) -> nx.Graph:
    """The undirected graph of tandems; ``members`` adds ids that have no tandem yet."""
    graph = nx.Graph()
    graph.add_nodes_from(members)
    for tandem in tandems:
        graph.add_edge(
            tandem.newcomer_id, tandem.mentor_id, started=tandem.started, ends=tandem.ends
        )
    return graph


def former_partners(graph: nx.Graph) -> set[frozenset[str]]:
    """Every pair of members that has (had) a tandem together, order-free."""
    return {frozenset((a, b)) for a, b in graph.edges}


def component_labels(graph: nx.Graph) -> dict[str, int]:
    """Connected-component number of every member in the graph.

    Components are numbered by their smallest member id, so labels do not depend on the order
    in which tandems were added. Linear in the size of the graph; computed once per solve.
    """
    components = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    return {member: label for label, nodes in enumerate(components) for member in nodes}


def min_cost_flow_assignment(
    scores: NDArray[np.float64],
    capacity: NDArray[np.int_],
    feasible: NDArray[np.bool_],
    scale: int = 1_000_000,
) -> NDArray[np.int_]:
    """Assign newcomers (rows) to mentors (columns) by networkx ``max_flow_min_cost``.

    Network: source -> each newcomer (capacity 1) -> each feasible mentor (capacity 1, cost
    ``-round(score * scale)``) -> sink (capacity = the mentor's capacity). A maximum flow matches
    as many newcomers as possible; among those it has the least cost, i.e. the highest total of
    integer-scaled scores. Returns the mentor column per newcomer, -1 when unassigned.

    Slow (network simplex on n * m edges): meant as an independent cross-check in tests.
    """
    n, m = scores.shape
    flow = nx.DiGraph()
    flow.add_node("source")
    flow.add_node("sink")
    for i in range(n):
        flow.add_edge("source", ("newcomer", i), capacity=1, weight=0)
    for j in range(m):
        flow.add_edge(("mentor", j), "sink", capacity=int(capacity[j]), weight=0)
    for i, j in zip(*np.nonzero(feasible), strict=True):
        cost = -round(float(scores[i, j]) * scale)
        flow.add_edge(("newcomer", int(i)), ("mentor", int(j)), capacity=1, weight=cost)
    result = nx.max_flow_min_cost(flow, "source", "sink")
    assignment = np.full(n, -1, dtype=np.int_)
    for i in range(n):
        for target, amount in result[("newcomer", i)].items():
            if amount > 0:
                assignment[i] = target[1]
    return assignment
