"""Unit tests of apiprofile.py, the split of an apiserver CPU profile.

Run with `python3 -m unittest discover -s e2e/bench -p 'test_*.py'`
(`make test` does)."""
import unittest

import apiprofile

# The shape of `go tool pprof -top -cum` output, with made-up figures.
TOP = """File: kube-apiserver
Type: cpu
Duration: 30s, Total samples = 1.5mins (300.00%)
Showing nodes accounting for 60s, 66.67% of 90s total
      flat  flat%   sum%        cum   cum%
         0     0%     0%        45s 50.00%  k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Update
     0.01s 0.011% 0.011%        18s 20.00%  k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update
         0     0% 0.011%         9s 10.00%  k8s.io/kubernetes/pkg/registry/core/pod/storage.(*StatusREST).Update
         0     0% 0.011%      900ms  1.00%  k8s.io/kubernetes/pkg/registry/core/node/storage.(*StatusREST).Update
     1.20s  1.33%  1.34%      4.5s  5.00%  runtime.gcBgMarkWorker
         0     0%  1.34%     1500us 0.0017%  k8s.io/apiserver/pkg/endpoints/handlers.ListResource.func1
"""


class SplitTest(unittest.TestCase):
    def test_parts_are_cumulative_seconds_as_shares_of_all_samples(self):
        got = apiprofile.split(TOP)
        self.assertAlmostEqual(got["sample_seconds"], 90.0)
        self.assertAlmostEqual(got["profile_seconds"], 30.0)
        self.assertAlmostEqual(got["cores"], 3.0)
        parts = got["parts"]
        self.assertAlmostEqual(parts["GpuTask status writes"]["seconds"], 18.0)
        self.assertAlmostEqual(parts["GpuTask status writes"]["share"], 0.2)
        self.assertAlmostEqual(parts["node status writes"]["seconds"], 0.9)
        self.assertAlmostEqual(parts["Go's garbage collector"]["share"], 0.05)
        self.assertAlmostEqual(parts["lists"]["seconds"], 0.0015)

    def test_other_updates_are_all_updates_less_the_status_writes(self):
        parts = apiprofile.split(TOP)["parts"]
        self.assertAlmostEqual(parts["updates and patches, other (pod finalizers, metadata)"]["seconds"],
                               45.0 - 18.0 - 9.0 - 0.9)

    def test_the_rest_is_what_the_disjoint_parts_leave(self):
        parts = apiprofile.split(TOP)["parts"]
        self.assertAlmostEqual(parts["the rest (request handling, TLS, etcd client)"]["seconds"],
                               90.0 - 45.0 - 4.5 - 0.0015)

    def test_a_frame_missing_from_the_profile_is_zero(self):
        self.assertEqual(apiprofile.split(TOP)["parts"]["bindings"]["seconds"], 0.0)

    def test_output_without_samples_gives_nothing(self):
        self.assertIsNone(apiprofile.split("File: kube-apiserver\nType: cpu\n"))


if __name__ == "__main__":
    unittest.main()
