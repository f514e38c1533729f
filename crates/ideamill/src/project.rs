//! Finding and loading a project: its config file and its store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ideamill_core::Config;
use ideamill_store::{OpenOptions, Store};

/// There is no config where we looked (exit code 78).
#[derive(Debug)]
pub struct ConfigMissing(pub PathBuf);

impl std::fmt::Display for ConfigMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no config at {}: run `ideamill init` here, or pass --config (or set IDEAMILL_CONFIG)",
            self.0.display()
        )
    }
}

impl std::error::Error for ConfigMissing {}

/// The config file to use: `--config`/`IDEAMILL_CONFIG`, else ./ideamill.toml.
pub fn config_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    Ok(match given {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => cwd.join(p),
        None => cwd.join("ideamill.toml"),
    })
}

/// Read and validate the config. Errors carry every problem at once.
pub fn load_config(given: Option<&Path>) -> anyhow::Result<Config> {
    let path = config_path(given)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigMissing(path).into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(ideamill_core::config::parse(&text, &path)?)
}

/// Open the project's store, creating and migrating it when needed.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(config, false).await
}

/// Open the store for reading: a missing store is an error, not created.
pub async fn open_existing_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(config, true).await
}

async fn open_store_with(config: &Config, must_exist: bool) -> anyhow::Result<Arc<dyn Store>> {
    let options = OpenOptions {
        wake_dir: Some(wake_dir(config)),
        must_exist,
    };
    let store = ideamill_store::open(&config.store.url, &options)
        .await
        .with_context(|| {
            format!(
                "cannot open the store {}",
                ideamill_store::redact_url(&config.store.url)
            )
        })?;
    Ok(Arc::from(store))
}

pub fn wake_dir(config: &Config) -> PathBuf {
    config.engine.data_dir.join("wake")
}

/// Parse an item id given on the command line.
pub fn parse_id(s: &str) -> anyhow::Result<i64> {
    s.trim_start_matches('#')
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| {
            format!("`{s}` is not an item id (ids are positive numbers, as `ideamill list` shows)")
        })
}

/// A problem with the config found outside the file itself (a template, a
/// key): reported, and exited on, like a config error (78).
pub fn config_problem(config: &Config, message: String) -> ideamill_core::ConfigErrors {
    ideamill_core::ConfigErrors(vec![ideamill_core::ConfigError {
        file: config.path.clone(),
        line: 0,
        column: 0,
        message,
    }])
}
