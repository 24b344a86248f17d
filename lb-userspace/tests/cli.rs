//! The command line as a user meets it: where `--pin-dir` may stand, the
//! environment, and values refused when parsed (exit 2, clap's usage
//! error) rather than after the agent has started setting up.

use std::process::{Command, Output};

/// `lb-agent ARGS` with only `env` in its environment.
fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running lb-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pin_dir_goes_before_or_after_the_subcommand_or_comes_from_lb_pin_dir() {
    // Nothing is pinned there: each command fails naming the directory
    // it looked in, which is what this checks.
    for (args, env, dir) in [
        (
            &["--pin-dir", "/nonexistent/a", "status"][..],
            &[][..],
            "/nonexistent/a",
        ),
        (
            &["status", "--pin-dir", "/nonexistent/b"],
            &[],
            "/nonexistent/b",
        ),
        (
            &["service", "list", "--pin-dir=/nonexistent/c", "-o", "json"],
            &[],
            "/nonexistent/c",
        ),
        (
            &["--pin-dir", "/nonexistent/d", "policy", "get", "x/y"],
            &[],
            "/nonexistent/d",
        ),
        (
            &["backend", "list"],
            &[("LB_PIN_DIR", "/nonexistent/e")],
            "/nonexistent/e",
        ),
    ] {
        let out = agent(args, env);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(dir),
            "{args:?} {env:?} should look in {dir}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_values_are_usage_errors_naming_the_flag() {
    for (args, env, flag) in [
        (
            &["run", "--source", "kube", "--health-addr", "nowhere"][..],
            &[][..],
            "--health-addr",
        ),
        (
            &["run", "--source", "kube"],
            &[("LB_HEALTH_ADDR", "10.0.0.1")],
            "--health-addr",
        ),
        (
            &["run", "--source", "kube", "--api-server", "https://[::1"],
            &[],
            "--api-server",
        ),
        (
            &["run", "--source", "kube", "--maglev-table-size", "100"],
            &[],
            "--maglev-table-size",
        ),
        (
            &["run", "--source", "kube", "--max-ct", "many"],
            &[],
            "--max-ct",
        ),
        (
            &["run", "--source", "kube"],
            &[("LB_MAX_SERVICES", "-1")],
            "--max-services",
        ),
        (&["policy", "get", "just-a-name"], &[], "<POD>"),
        (&["status", "-o", "yaml"], &[], "--output"),
    ] {
        let out = agent(args, env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?} is a usage error: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(flag),
            "{args:?} {env:?} names {flag}: {}",
            stderr(&out)
        );
    }
}
