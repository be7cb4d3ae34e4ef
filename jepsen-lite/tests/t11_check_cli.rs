//! `jepsen-lite check` answers with the documented exit codes.

use std::process::Command;

fn check(file: &str) -> Option<i32> {
    // Read when the test runs (see t10): a shared build cache may move this binary.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{manifest}/../../shared/corpus/jepsen-etcd/jepsen/{file}");
    Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
        .args(["check", &path])
        .output()
        .unwrap()
        .status
        .code()
}

#[test]
fn t11_exit_codes_say_the_verdict() {
    assert_eq!(check("etcd_002.log"), Some(0), "linearizable");
    assert_eq!(check("etcd_000.log"), Some(1), "not linearizable");
    assert_eq!(check("no_such_file.log"), Some(3), "unreadable");
}
