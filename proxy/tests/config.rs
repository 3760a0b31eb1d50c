//! Settings from a TOML file and the environment beside the flags:
//! precedence flags > environment > file > defaults, errors in the file
//! named by file, line and field, and `coalesce-proxy check`.
//!
//! One test function: the environment is the process's, shared by every
//! test in this binary.

use std::process::Command;
use std::time::Duration;

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn settings_come_from_flags_then_environment_then_file_then_defaults() {
    let dir = scratch();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        "# a proxy in front of the shop\n\
         upstream = \"http://127.0.0.1:3000\"\n\
         ttl-ms = 1500\n\
         lease-ms = 2000\n\
         access-log = true\n\
         max-connections = 500\n\
         redis-cluster = [\"redis://10.0.0.1:6379/\", \"redis://10.0.0.2:6379/\"]\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();

    // The file alone, over the defaults.
    let args = coalesce_proxy::Args::parse(["--config", config]).unwrap();
    assert_eq!(args.upstream, "http://127.0.0.1:3000");
    assert_eq!(args.ttl, Some(Duration::from_millis(1500)));
    assert_eq!(args.lease, Some(Duration::from_secs(2)));
    assert_eq!(args.access_log, Some(false));
    assert_eq!(args.max_connections, 500);
    assert_eq!(args.redis_cluster.len(), 2);
    assert_eq!(
        args.upstream_options.timeout,
        Duration::from_secs(60),
        "a default"
    );

    // The environment over the file; a flag over both.
    std::env::set_var("COALESCE_TTL_MS", "2500");
    std::env::set_var("COALESCE_MAX_CONNECTIONS", "700");
    let args = coalesce_proxy::Args::parse(["--config", config, "--max-connections=900"]).unwrap();
    std::env::remove_var("COALESCE_TTL_MS");
    std::env::remove_var("COALESCE_MAX_CONNECTIONS");
    assert_eq!(args.ttl, Some(Duration::from_millis(2500)));
    assert_eq!(args.max_connections, 900);
    assert_eq!(args.lease, Some(Duration::from_secs(2)));

    // The file named by the environment.
    std::env::set_var("COALESCE_CONFIG", config);
    let args = coalesce_proxy::Args::parse(Vec::<String>::new());
    std::env::remove_var("COALESCE_CONFIG");
    assert_eq!(args.unwrap().ttl, Some(Duration::from_millis(1500)));

    // Errors name the file, the line and the field.
    let bad = |text: &str| {
        std::fs::write(&file, text).unwrap();
        coalesce_proxy::Args::parse(["--config", config]).unwrap_err()
    };
    let error = bad("upstream = \"http://h:1\"\n\nttl-ms = \"soon\"\n");
    assert!(
        error.starts_with(&format!("{config}:3: field `ttl-ms`")),
        "{error}"
    );
    let error = bad("upstream = \"http://h:1\"\nttl_ms = 5\n");
    assert!(
        error.starts_with(&format!("{config}:2: field `ttl_ms`: no such setting")),
        "{error}"
    );
    let error = bad("upstream = \"http://h:1\"\naccess-log = \"yes\"\n");
    assert!(
        error.contains(":2: field `access-log`: expected true or false"),
        "{error}"
    );
    let error = bad("upstream = \"http://h:1\"\nttl-ms = [1\n");
    assert!(
        error.starts_with(config) && error.contains("line 2"),
        "{error}"
    );
    let error = coalesce_proxy::Args::parse(["--config", "/nonexistent/proxy.toml"]).unwrap_err();
    assert!(
        error.contains("cannot read /nonexistent/proxy.toml"),
        "{error}"
    );

    // `check` prints the effective settings, or the error with status 2.
    let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:3000\"\nttl-ms = 1500\n",
    )
    .unwrap();
    let checked = Command::new(bin)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert!(checked.status.success());
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("upstream = http://127.0.0.1:3000/"), "{text}");
    assert!(text.contains("freshness = ttl 1500 ms"), "{text}");
    std::fs::write(&file, "upstream = \"http://127.0.0.1:3000\"\nttl-ms = -4\n").unwrap();
    let checked = Command::new(bin)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(2));
    let error = String::from_utf8_lossy(&checked.stderr);
    assert!(
        error.contains(&format!("{config}:2: field `ttl-ms`")),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
