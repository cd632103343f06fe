//! Replays every checked-in corpus file (`fuzz/corpus/<target>/*`) through its fuzz body on
//! stable Rust, so the inputs the fuzzer found interesting keep being checked by `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

/// Every file in `fuzz/corpus/<target>/`, sorted by name.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} cannot be read: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `body` on each corpus file of `target`, naming the file on failure.
fn replay(target: &str, body: fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for path in files {
        let data = fs::read(&path).expect("corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{target}: corpus file {} fails:\n{msg}", path.display());
        }
    }
}

#[test]
fn apply_ops_corpus() {
    replay("apply_ops", fuzz::apply_ops);
}

#[test]
fn tp1_pair_corpus() {
    replay("tp1_pair", fuzz::tp1_pair);
}

#[test]
fn decode_message_corpus() {
    replay("decode_message", fuzz::decode_message);
}

#[test]
fn store_reload_corpus() {
    replay("store_reload", fuzz::store_reload);
}
