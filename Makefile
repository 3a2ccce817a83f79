# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo down test unit e2e cluster-up cluster-down crds bench

## Build, start the local control plane, the controller and the sample task.
demo:
	bash e2e/demo.sh up

## Stop the demo processes and the local control plane.
down:
	bash e2e/demo.sh down

## Lints, unit tests and the end-to-end suite on the real control plane.
test:
	bash e2e/test.sh

unit:
	cargo test

cluster-up:
	bash e2e/cluster/up.sh

cluster-down:
	bash e2e/cluster/down.sh

## Regenerate the CRDs from the Rust types.
crds:
	cargo run --quiet -- crds > crds/runplane.yaml

## Benchmarks on the local control plane (own ports; BENCH_SCALE=tiny|small|full).
bench:
	BENCH_SCALE=$(or $(BENCH_SCALE),full) bash e2e/bench/run.sh
