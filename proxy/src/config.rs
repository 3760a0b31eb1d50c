//! Settings from three places besides the defaults: the command line, the
//! environment (`COALESCE_<FLAG>`, e.g. `COALESCE_UPSTREAM_TIMEOUT_MS`) and
//! a TOML file (`--config FILE` or `COALESCE_CONFIG`), whose keys are the
//! flags' names (`upstream-timeout-ms = 5000`, `access-log = true`).
//! Precedence: flags > environment > file > defaults. The file's values
//! become flags that clap checks like any other, so a value is checked the
//! same wherever it comes from, and an error in the file names the file,
//! the line and the field.

use std::collections::HashMap;

/// The environment variable a flag is also read from: `--ttl-ms` is
/// `COALESCE_TTL_MS`.
pub(crate) fn env_name(long: &str) -> String {
    format!("COALESCE_{}", long.to_uppercase().replace('-', "_"))
}

/// Where a setting read from the file came from, for messages.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    path: Option<String>,
    /// The file's fields, by flag name, and the line each is on.
    lines: HashMap<String, usize>,
}

impl Origins {
    /// `error` (clap's, about a flag) told in terms of the file, if the
    /// flag came from it.
    pub(crate) fn explain(&self, error: clap::Error) -> String {
        let (Some(path), Some(clap::error::ContextValue::String(arg))) =
            (&self.path, error.get(clap::error::ContextKind::InvalidArg))
        else {
            return error.to_string();
        };
        let name = arg
            .trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or_default();
        match self.lines.get(name) {
            Some(line) => format!("{path}:{line}: field `{name}`: {}", first_line(&error)),
            None => error.to_string(),
        }
    }
}

/// The first line of clap's message, without its `error: ` prefix.
pub(crate) fn first_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// The command line with the file's settings in front: `argv` (without the
/// program's name) with `--config FILE` taken out, and a `--flag=value` for
/// each field of the file that neither `argv` nor the environment sets.
#[allow(clippy::type_complexity)]
pub(crate) fn with_file(
    argv: Vec<String>,
) -> Result<(Vec<String>, Origins, Vec<crate::routes::RouteSpec>), String> {
    let (file, argv) = take_config(argv)?;
    let Some(path) = file.or_else(|| std::env::var("COALESCE_CONFIG").ok()) else {
        return Ok((argv, Origins::default(), Vec::new()));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{path}: {e}"))?;
    let routes = crate::routes::RoutesFile::read(&path, &text)?;
    let command = crate::cli::command();
    let mut origins = Origins {
        path: Some(path.clone()),
        lines: HashMap::new(),
    };
    let mut from_file = Vec::new();
    for (key, value) in &table {
        if key == "route" {
            continue;
        }
        let line = line_of(&text, key);
        let at = |what: &str| format!("{path}:{line}: field `{key}`: {what}");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config");
        let Some(arg) = arg else {
            return Err(at("no such setting (the file's keys are the flags' names)"));
        };
        if given(&argv, key) || std::env::var_os(env_name(key)).is_some() {
            continue;
        }
        origins.lines.insert(key.clone(), line);
        let takes_value = arg.get_action().takes_values();
        let value = match value {
            toml::Value::Boolean(on) if !takes_value => {
                if *on {
                    from_file.push(format!("--{key}"));
                }
                continue;
            }
            _ if !takes_value => return Err(at("expected true or false")),
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(at("expected a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(at("expected a string, a number or a list of strings")),
        };
        from_file.push(format!("--{key}={value}"));
    }
    from_file.extend(argv);
    Ok((from_file, origins, routes))
}

/// `--config FILE` (or `--config=FILE`) taken out of `argv`.
fn take_config(argv: Vec<String>) -> Result<(Option<String>, Vec<String>), String> {
    let mut file = None;
    let mut rest = Vec::with_capacity(argv.len());
    let mut args = argv.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            file = Some(args.next().ok_or("--config needs a FILE")?);
        } else if let Some(path) = arg.strip_prefix("--config=") {
            file = Some(path.to_owned());
        } else {
            rest.push(arg);
        }
    }
    Ok((file, rest))
}

/// Whether `argv` sets the flag `--long`.
fn given(argv: &[String], long: &str) -> bool {
    argv.iter().any(|arg| {
        arg.strip_prefix("--")
            .and_then(|a| a.strip_prefix(long))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

/// The line (from 1) where `key` is set in the TOML `text`.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix('"').unwrap_or(line);
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start_matches('"').trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// Every flag of `command` also read from its environment variable.
pub(crate) fn with_env(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| match arg.get_long() {
        Some(long) if long != "help" && long != "version" => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    })
}
