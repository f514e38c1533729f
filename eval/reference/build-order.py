import heapq


def build_order(deps):
    tasks = set(deps)
    for needed in deps.values():
        tasks.update(needed)
    waiting = {t: set(deps.get(t, ())) for t in tasks}
    users = {t: [] for t in tasks}
    for t, needed in waiting.items():
        for d in needed:
            users[d].append(t)
    ready = [t for t, needed in waiting.items() if not needed]
    heapq.heapify(ready)
    order = []
    while ready:
        t = heapq.heappop(ready)
        order.append(t)
        for u in users[t]:
            waiting[u].discard(t)
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(order) != len(tasks):
        raise ValueError("dependency cycle")
    return order
