//! The inputs of a cargo-fuzz target, for unit tests that run them on stable, so CI
//! exercises every fuzz target's checks without nightly (see `dataplane/fuzz/README.md`).

use std::path::Path;

/// The files of `dir`, sorted by name; none when it does not exist.
fn read_dir_sorted(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The committed seeds of fuzz target `target` (`<crate>/fuzz/seeds/<target>`, sorted by
/// file name). `crate_dir` is the fuzzed crate's `CARGO_MANIFEST_DIR`.
///
/// # Panics
/// When fewer than `min` seeds are found (they are in git: a missing seed is a bug).
pub fn seeds(crate_dir: &str, target: &str, min: usize) -> Vec<Vec<u8>> {
    let dir = Path::new(crate_dir).join("fuzz/seeds").join(target);
    let seeds = read_dir_sorted(&dir);
    assert!(
        seeds.len() >= min,
        "{} holds {} seeds, expected at least {min} (they are in git)",
        dir.display(),
        seeds.len()
    );
    seeds
}

/// [`seeds`], the local corpus a `cargo fuzz run` grew (`fuzz/corpus/<target>`, not in
/// git, often absent), and for every seed each truncation (1 .. len−1 bytes) and each
/// single-byte corruption (byte i ≥ 1 XOR 0x01, 0xff, 0x81, 0x01|0x00): the mutations
/// libFuzzer tries first.
///
/// # Panics
/// As [`seeds`].
pub fn inputs_with_mutations(crate_dir: &str, target: &str, min: usize) -> Vec<Vec<u8>> {
    let seeds = seeds(crate_dir, target, min);
    let mut inputs = seeds.clone();
    inputs.extend(read_dir_sorted(
        &Path::new(crate_dir).join("fuzz/corpus").join(target),
    ));
    for s in &seeds {
        for n in 1..s.len() {
            inputs.push(s[..n].to_vec());
        }
        for i in 1..s.len() {
            for x in [0x00u8, 0xff, 0x80, 0x01] {
                let mut m = s.clone();
                m[i] ^= x | 1;
                inputs.push(m);
            }
        }
    }
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_cover_truncations_and_corruptions_of_each_seed() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let seeds = seeds(dir, "vtep_decap", 1);
        let all = inputs_with_mutations(dir, "vtep_decap", 1);
        let expected: usize = seeds.iter().map(|s| 1 + (s.len() - 1) * 5).sum();
        assert!(all.len() >= expected, "{} < {expected}", all.len());
        assert_eq!(&all[..seeds.len()], &seeds[..]);
    }
}
