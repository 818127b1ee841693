//! Fuzzes the descriptor-chain handling of the vhost brick (transmit and receive paths)
//! against a guest memory and a split virtqueue built from the input bytes.
//! Run: `cd vhost/fuzz && cargo +nightly fuzz run chains corpus/chains seeds/chains`.
//! Without cargo-fuzz, on stable, with coverage instrumentation:
//! `RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4
//! -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
//! -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares
//! --cfg fuzzing -Cdebug-assertions -Coverflow-checks" cargo build --release
//! --target x86_64-unknown-linux-gnu` then run
//! `target/x86_64-unknown-linux-gnu/release/chains corpus seeds/chains -max_total_time=180`.
#![no_main]

use std::sync::OnceLock;

use butterfly_vhost::fuzzing::{Pool, pool, run};
use libfuzzer_sys::fuzz_target;

static POOL: OnceLock<Pool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    run(data, POOL.get_or_init(pool));
});
