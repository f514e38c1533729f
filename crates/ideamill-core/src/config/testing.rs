//! What the config tests share: a config file's place, its parse, its
//! errors as "line:column: message", and a stage to make a file valid.

use std::path::Path;

use super::{CommandStage, Config, ConfigErrors, StageConfig, StageKind, parse};

pub(super) const FILE: &str = "/proj/ideamill.toml";

/// The smallest valid pipeline, four lines long.
pub(super) const STAGE: &str =
    "[[stages]]\nname = \"build\"\nkind = \"command\"\ncommand = [\"make\"]\n";

/// Every error as "line:column: message".
pub(super) fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new(FILE)) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(ConfigErrors(errors)) => errors
            .iter()
            .map(|e| {
                assert_eq!(e.file, Path::new(FILE));
                format!("{}:{}: {}", e.line, e.column, e.message)
            })
            .collect(),
    }
}

pub(super) fn check_errors(text: &str, expected: &[&str]) {
    assert_eq!(errors(text), expected, "config:\n{text}");
}

pub(super) fn config(text: &str) -> Config {
    parse(text, Path::new(FILE))
        .unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nconfig:\n{text}"))
}

pub(super) fn command(stage: &StageConfig) -> &CommandStage {
    match &stage.kind {
        StageKind::Command(command) => command,
        StageKind::Llm(_) | StageKind::Agent(_) => {
            panic!("stage {} is not a command stage", stage.name)
        }
    }
}

pub(super) fn stage_named(name: &str) -> String {
    format!("[[stages]]\nname = {name:?}\nkind = \"command\"\ncommand = [\"x\"]")
}
