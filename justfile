# Slipway's everyday commands. CI and people run the same ones.

default:
    @just --list --unsorted

# Deploy, restart and force-rebuild the example app on a throwaway daemon.
demo:
    cargo run --release -p slipway -- demo

# Format the code.
fmt:
    cargo fmt --all

# Formatting and clippy, warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Every test (the Docker ones need a running engine).
test:
    cargo test --workspace

# The benchmarks, side by side with their baselines; figures go to docs/benchmarks.md. The
# slipway binary is built first: one benchmark runs it as processes, from beside the bench's.
bench:
    cargo build --release -p slipway
    cargo run --release -p slipway-bench -- --write docs/benchmarks.md

# The API docs of every crate.
doc:
    cargo doc --workspace --no-deps

# Run the daemon with a data dir in ./target.
serve:
    cargo run --release -p slipway -- serve --data-dir target/slipway-data
