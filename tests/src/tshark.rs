//! tshark as an independent dissector: read a capture file back and get its frames'
//! bytes or chosen fields.

use std::path::Path;
use std::process::Command;

use crate::netns::require_tool;

fn tshark(path: &Path, args: &[&str]) -> String {
    require_tool("tshark");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(args)
        .output()
        .expect("cannot start tshark");
    if !out.status.success() {
        panic!(
            "tshark -r {} {args:?} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("tshark output is UTF-8")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex string from tshark: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from tshark"))
        .collect()
}

/// The bytes of every frame of the capture at `path`, in order, as tshark reads them
/// (`tshark -r PATH -T json -x`, field `frame_raw`).
///
/// # Panics
/// When tshark is missing ("tshark not found: run cargo xtask deps") or fails.
pub fn frames(path: &Path) -> Vec<Vec<u8>> {
    let json = tshark(path, &["-T", "json", "-x"]);
    let mut frames = Vec::new();
    let key = "\"frame_raw\": [";
    let mut rest = json.as_str();
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let start = rest.find('"').expect("frame_raw value") + 1;
        let end = start + rest[start..].find('"').expect("end of frame_raw value");
        frames.push(unhex(&rest[start..end]));
        rest = &rest[end..];
    }
    frames
}

/// The values of `fields` for every frame (`tshark -r PATH -T fields -e F1 -e F2 ...`),
/// one row per frame, one string per field (empty when the frame has no such field;
/// repeated fields are joined with ',').
///
/// # Panics
/// When tshark is missing or fails.
pub fn fields(path: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    tshark(path, &args)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Runs a display filter and returns how many frames match (`tshark -r PATH -Y FILTER`).
///
/// # Panics
/// When tshark is missing or the filter is invalid.
pub fn count(path: &Path, filter: &str) -> usize {
    tshark(path, &["-Y", filter, "-T", "fields", "-e", "frame.number"])
        .lines()
        .count()
}
