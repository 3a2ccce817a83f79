"""The backlog scenario's replay: from what a run observed, the GPUs held and
running over time, and the gaps between a GPU freed and the next pod. Pure
Python with no dependencies, so that its unit tests (test_replay.py) run
anywhere."""
from collections import deque


def replay(created, added, finished, account_of, limit_of, quota, split=None, running=None):
    """Replays a backlog run from what was observed: each task's create (the
    loader's answer), each pod's creation and end (the pod watch, one stream
    in the apiserver's order), all on one clock; one GPU per task.

    At every moment it knows, per account, the tasks waiting (created, no pod
    yet) and the pods holding a GPU, and so:
    - `open slots`: how many waiting tasks could start now, by the quota and
      their accounts' concurrency limits;
    - `allowed`: the GPUs that could be in use, min(quota, the limits of the
      accounts with tasks waiting + the GPUs the other accounts hold).
    A pod's end that opens a slot starts a gap; each pod creation that fills
    a slot ends the oldest open gap (first in, first out). Arrivals that open
    slots queue in the same line but are not gaps.

    A pod holds its GPU from its creation to its end; `running` (when each
    pod was first seen running) tells how much of that it ran.

    Returns the integrals over the time tasks waited (from the first pod to
    the last pod created), also split at `split` (the last create), the gaps
    in seconds, and a series for the plot."""
    events = [(t, 0, account_of[k]) for k, t in created.items()]
    events += [(t, 1, account_of[k]) for k, t in added.items()]
    events += [(t, 2, account_of[k]) for k, t in finished.items()]
    # A pod's run: from first seen running to its end (kinds 3 and 4 count
    # only the GPUs running, nothing else).
    runs = [(running[k], t) for k, t in finished.items() if k in (running or {}) and running[k] <= t]
    events += [(a, 3, None) for a, _ in runs] + [(b, 4, None) for _, b in runs]
    events.sort(key=lambda e: (e[0], e[1]))
    accounts = sorted(limit_of)
    waiting = dict.fromkeys(accounts, 0)
    held = dict.fromkeys(accounts, 0)
    a0, a1 = min(added.values()), max(added.values())

    def state():
        in_use = sum(held.values())
        startable = sum(min(max(0, waiting[a]), max(0, limit_of[a] - held[a])) for a in accounts)
        slots = max(0, min(quota - in_use, startable))
        waiting_total = sum(max(0, w) for w in waiting.values())
        allowed = min(quota, sum(limit_of[a] if waiting[a] > 0 else held[a] for a in accounts))
        return slots, in_use, waiting_total, allowed

    line = deque()  # open slots: (since, opened by a pod's end)
    gaps, unpaired_starts = [], 0
    allowed_int = 0.0
    # [before split, from split on]: (GPU-seconds held, seconds waited,
    # GPU-seconds running)
    parts = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    working = 0
    split = a1 if split is None else split
    series = []
    done = 0
    slots, in_use, waiting_total, allowed = state()
    prev = events[0][0] if events else 0.0
    for t, kind, a in events:
        # integrate the level that held since the previous event
        lo, hi = max(prev, a0), min(t, a1)
        if hi > lo and waiting_total > 0:
            allowed_int += allowed * (hi - lo)
            for i, (x, y) in enumerate(((lo, min(hi, split)), (max(lo, split), hi))):
                if y > x:
                    parts[i][0] += in_use * (y - x)
                    parts[i][1] += y - x
                    parts[i][2] += working * (y - x)
        prev = t
        if kind >= 3:
            working += 1 if kind == 3 else -1
            series.append((t, in_use, allowed, waiting_total, done, working))
            continue
        if kind == 0:
            waiting[a] += 1
        elif kind == 1:
            waiting[a] -= 1
            held[a] += 1
        else:
            held[a] -= 1
            done += 1
        new_slots, in_use, waiting_total, allowed = state()
        if new_slots > slots:
            line.extend([(t, kind == 2)] * (new_slots - slots))
        elif new_slots < slots:
            for _ in range(slots - new_slots):
                since, freed = line.popleft()
                if freed:
                    gaps.append(t - since)
        elif kind == 1:
            unpaired_starts += 1  # a start the replay saw no open slot for
        slots = new_slots
        series.append((t, in_use, allowed, waiting_total, done, working))
    return {"used_gpu_seconds": parts[0][0] + parts[1][0], "allowed_gpu_seconds": allowed_int,
            "waited_seconds": parts[0][1] + parts[1][1],
            "window": (a0, a1), "parts": parts, "gaps": gaps, "open_at_end": len(line),
            "unpaired_starts": unpaired_starts,
            "series": series}
