# The two commands of the README's quick start are `make dev` and `make test`;
# each installs whatever is missing first (scripts/setup.sh).
.PHONY: dev test setup build bench fuzz deploy reset clean openapi readme

## Run the worker locally (workerd, local KV, the local Kling stand-in unless .dev.vars has Kling credentials).
dev:
	@scripts/setup.sh
	@PATH="$(CURDIR)/node_modules/.bin:$$PATH" node scripts/dev.mjs

## Run every test: lints, native unit tests, wasm32 tests, end-to-end tests in workerd.
test:
	@scripts/test.sh

## Install the toolchain pieces and npm packages that are missing.
setup:
	@scripts/setup.sh

## Build the worker into build/ (what wrangler's [build] runs).
build: setup
	@scripts/build.sh

## Measure the worker against a null forwarding Worker and a plain JS reference in workerd (ratios,
## CPU per request, KV writes, wasm size); PROFILE=1 also prints where the time goes.
bench:
	@scripts/setup.sh --bench
	@scripts/build.sh
	@BENCH_PROFILE=$(if $(PROFILE),1,0) PATH="$(CURDIR)/node_modules/.bin:/usr/sbin:$$PATH" node scripts/bench.mjs

## Fuzz each target for 10 minutes (scripts/fuzz.sh SECONDS for another budget).
fuzz:
	@scripts/fuzz.sh

## Deploy with wrangler (after `wrangler login` and the secrets: see README).
deploy: setup
	@PATH="$(CURDIR)/node_modules/.bin:$$PATH" wrangler deploy

## Regenerate public/openapi.json from the endpoint tables (src/api); a test checks it is current.
openapi:
	UPDATE_OPENAPI=1 cargo test --quiet --lib api::openapi

## Regenerate the README's settings table from src/config.rs; a test checks it is current.
readme:
	UPDATE_README=1 cargo test --quiet --lib config::tests::the_readme

## Forget every local task (local KV, Durable Objects and R2 under .wrangler/state); keeps the keys in target/dev.
reset:
	rm -rf .wrangler/state

clean:
	rm -rf build target .wrangler
