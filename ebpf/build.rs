//! Compiles the XDP programs in `src/bpf/*.c` with clang (`-target bpf`) into `OUT_DIR`,
//! where `src/lib.rs` embeds them with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    for prog in ["steer", "loadgen"] {
        let src = format!("src/bpf/{prog}.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{prog}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
                "-target",
                "bpf",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
                &src,
                "-o",
            ])
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "clang failed ({s}) compiling {src}: are libbpf-dev and linux-libc-dev \
                 installed? run cargo xtask deps"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("clang not found: run cargo xtask deps")
            }
            Err(e) => panic!("cannot run clang ({clang}): {e}"),
        }
    }
}
