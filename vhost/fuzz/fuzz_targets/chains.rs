//! Fuzzes the descriptor-chain handling of the vhost brick (transmit and receive paths)
//! against a guest memory and a split virtqueue built from the input bytes.
//! Run: `cd vhost/fuzz && cargo +nightly fuzz run chains corpus/chains seeds/chains`.
#![no_main]

use std::sync::OnceLock;

use butterfly_vhost::fuzzing::{Pool, pool, run};
use libfuzzer_sys::fuzz_target;

static POOL: OnceLock<Pool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    run(data, POOL.get_or_init(pool));
});
