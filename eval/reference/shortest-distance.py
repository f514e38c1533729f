import heapq


def shortest_distance(edges, start, goal):
    if start == goal:
        return 0
    graph = {}
    for a, b, weight in edges:
        graph.setdefault(a, []).append((b, weight))
        graph.setdefault(b, []).append((a, weight))
    best = {start: 0}
    queue = [(0, 0, start)]
    counter = 1
    while queue:
        dist, _, node = heapq.heappop(queue)
        if node == goal:
            return dist
        if dist > best.get(node, dist):
            continue
        for nxt, weight in graph.get(node, ()):
            nd = dist + weight
            if nxt not in best or nd < best[nxt]:
                best[nxt] = nd
                heapq.heappush(queue, (nd, counter, nxt))
                counter += 1
    return None
