//! README.md's webhook verification example runs as shown, with Python's
//! own hmac, and accepts its test vector (which the unit tests of
//! `domain::webhook` check against runplane's signing).

use std::io::Write;
use std::process::{Command, Stdio};

/// The first ```python block after `heading`.
fn python_block(readme: &str, heading: &str) -> String {
    let section = &readme[readme.find(heading).expect("the README has the section")..];
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let end = section[start..].find("```").expect("the block ends");
    section[start..start + end].to_string()
}

#[test]
fn the_readme_verification_example_runs_and_accepts_its_test_vector() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = python_block(&readme, "### Verifying a delivery");
    assert!(example.contains("runkey_ok") && example.contains("standard_ok") && example.contains("TOLERANCE"));
    let mut python = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python.stdin.take().unwrap().write_all(example.as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "the README's example failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
