"""Unit tests of the backlog's replay, whose integrals and gaps are the
figures docs/benchmarks.md reports: python3 -m unittest discover -s e2e/bench"""
import unittest

from replay import replay


def run(pods, created=None, limit=2, quota=1, split=None):
    """pods: name -> (created, first seen running or None, ended), all of one
    account; every task is created at 0 unless `created` says otherwise."""
    created = created or {}
    keys = {name: ("ns", name) for name in pods}
    return replay(
        created={keys[n]: created.get(n, 0.0) for n in pods},
        added={keys[n]: p[0] for n, p in pods.items()},
        finished={keys[n]: p[2] for n, p in pods.items()},
        account_of={k: "ns" for k in keys.values()},
        limit_of={"ns": limit},
        quota=quota,
        split=split,
        running={keys[n]: p[1] for n, p in pods.items() if p[1] is not None},
    )


class ReplayTest(unittest.TestCase):
    def test_held_running_and_waited_over_the_time_tasks_waited_split_at_the_last_create(self):
        # Quota 1: a runs 1-3, b 3.5-5, c is created at 5.2 and is the last
        # pod, so tasks waited from 1.0 (the first pod) to 5.2.
        r = run({"a": (1.0, 1.5, 3.0), "b": (3.5, 4.0, 5.0), "c": (5.2, 5.5, 6.0)}, split=4.0)
        self.assertEqual(r["window"], (1.0, 5.2))
        self.assertAlmostEqual(r["waited_seconds"], 4.2)
        self.assertAlmostEqual(r["used_gpu_seconds"], 2.0 + 1.5)
        self.assertAlmostEqual(r["allowed_gpu_seconds"], 4.2)
        before, after = r["parts"]
        self.assertAlmostEqual(before[0], 2.0 + 0.5)  # held: a, and b from 3.5 to the split
        self.assertAlmostEqual(before[1], 3.0)
        self.assertAlmostEqual(before[2], 1.5)  # running: a from 1.5 to 3
        self.assertAlmostEqual(after[0], 1.0)
        self.assertAlmostEqual(after[1], 1.2)
        self.assertAlmostEqual(after[2], 1.0)  # running: b from 4 to 5

    def test_a_gap_runs_from_a_freed_gpu_to_the_next_pod_created(self):
        r = run({"a": (1.0, 1.0, 3.0), "b": (3.5, 3.5, 5.0), "c": (5.2, 5.2, 6.0)})
        self.assertEqual([round(g, 6) for g in r["gaps"]], [0.5, 0.2])
        self.assertEqual(r["unpaired_starts"], 0)
        self.assertEqual(r["open_at_end"], 0)

    def test_a_start_after_an_arrival_with_capacity_free_is_no_gap(self):
        # Quota 2: b arrives at 2 while a holds one GPU; its pod at 2.3 fills
        # the slot its arrival opened, which no pod's end opened.
        r = run({"a": (0.1, 0.1, 5.0), "b": (2.3, 2.3, 4.0)}, created={"b": 2.0}, quota=2)
        self.assertEqual(r["gaps"], [])
        self.assertEqual(r["unpaired_starts"], 0)

    def test_an_end_that_opens_no_slot_is_no_gap(self):
        # The account's limit of 1 binds, not the quota of 2: a's end lets b
        # start; b's end, with nothing left waiting, opens nothing.
        r = run({"a": (0.1, 0.1, 1.0), "b": (1.4, 1.4, 3.0)}, limit=1, quota=2)
        self.assertEqual([round(g, 6) for g in r["gaps"]], [0.4])
        self.assertEqual(r["open_at_end"], 0)

    def test_a_start_the_replay_has_no_open_slot_for_is_counted(self):
        # Quota 1, and b's pod is created while a still holds the GPU.
        r = run({"a": (0.1, 0.1, 2.0), "b": (1.0, 1.0, 3.0)})
        self.assertEqual(r["unpaired_starts"], 1)

    def test_a_pod_never_seen_running_holds_its_gpu_but_runs_nothing(self):
        r = run({"a": (0.1, None, 2.0), "b": (2.5, 2.5, 3.0)})
        (held, waited, running), _ = r["parts"]
        self.assertAlmostEqual(held, 1.9)
        self.assertAlmostEqual(waited, 2.4)
        self.assertAlmostEqual(running, 0.0)


if __name__ == "__main__":
    unittest.main()
