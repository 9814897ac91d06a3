//! Running the `ggufq` binary in CLI tests. Included with `#[path = "common/cli.rs"] mod cli;`.

use std::process::{Command, Output};

/// Run `cmd` to completion and assert its exit code is `code`, showing its stderr if not.
pub fn run_code(cmd: &mut Command, code: i32) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{:?}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
