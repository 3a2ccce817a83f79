# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo down test unit e2e install-test cluster-up cluster-down crds deploy bench

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

## Regenerate the CRDs from the Rust types (and the chart's copy of them).
crds:
	cargo run --quiet -- crds > crds/runplane.yaml
	cp crds/runplane.yaml charts/runplane/crds/runplane.yaml

## Re-render deploy/runplane.yaml (plain manifests) from the Helm chart.
deploy:
	bash e2e/deploy.sh render

## Only the chart checks of `make test`: lint, deploy/ drift, dry run, install tests.
install-test:
	bash e2e/install.sh

## Benchmarks on the local control plane (own ports; BENCH_SCALE=tiny|small|full).
bench:
	BENCH_SCALE=$(or $(BENCH_SCALE),full) bash e2e/bench/run.sh
