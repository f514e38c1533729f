//! `[store]`: the database that holds all state.

use std::path::Path;

use super::section::{Got, Section, resolve};

/// The default database file, in `engine.data_dir`.
pub const DEFAULT_DATABASE: &str = "ideamill.db";

/// `[store]`: which database holds the items and jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `sqlite://<absolute path>` or `postgres://…`, as given otherwise.
    /// Default: `sqlite://<data_dir>/ideamill.db`.
    pub url: String,
}

pub(super) fn parse(s: &mut Section<'_>, root: &Path, data_dir: &Path) -> StoreConfig {
    let url = match s.string("url") {
        Got::Ok(url, span) => resolve_url(&url, root).unwrap_or_else(|why| {
            s.invalid("url", span, why);
            String::new()
        }),
        Got::Absent | Got::Bad => {
            format!("sqlite://{}", data_dir.join(DEFAULT_DATABASE).display())
        }
    };
    StoreConfig { url }
}

/// Makes a sqlite url's path absolute. Messages never repeat the url itself,
/// which may hold a password.
fn resolve_url(url: &str, root: &Path) -> Result<String, String> {
    let expected = "sqlite://PATH or postgres://HOST/DATABASE";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("is not a url; expected {expected}"));
    };
    if scheme.eq_ignore_ascii_case("sqlite") {
        // Options such as `?mode=ro` are not part of the file's path.
        let (file, options) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
        if file.is_empty() {
            return Err(format!("names no database file; expected {expected}"));
        }
        let file = resolve(root, Path::new(file));
        Ok(format!("sqlite://{}{options}", file.display()))
    } else if scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql") {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "has unsupported scheme \"{scheme}\"; expected {expected}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{STAGE, check_errors, config};

    fn check_url(store: &str, expected: Result<&str, &str>) {
        let text = format!("[engine]\ndata_dir = \"data\"\n[store]\n{store}\n{STAGE}");
        match expected {
            Ok(url) => assert_eq!(config(&text).store.url, url, "config:\n{text}"),
            Err(message) => check_errors(&text, &[message]),
        }
    }

    #[test]
    fn store_url() {
        check_url("", Ok("sqlite:///proj/data/ideamill.db"));
        check_url("url = \"sqlite://db/x.db\"", Ok("sqlite:///proj/db/x.db"));
        check_url(
            "url = \"sqlite://../x.db?mode=rwc\"",
            Ok("sqlite:///x.db?mode=rwc"),
        );
        check_url("url = \"sqlite:///srv/x.db\"", Ok("sqlite:///srv/x.db"));
        check_url("url = \"SQLite://x.db\"", Ok("sqlite:///proj/x.db"));
        check_url(
            "url = \"postgres://user:pw@db.local:5432/ideamill\"",
            Ok("postgres://user:pw@db.local:5432/ideamill"),
        );
        check_url(
            "url = \"postgresql://db/ideamill\"",
            Ok("postgresql://db/ideamill"),
        );
        check_url(
            "url = \"mysql://user:secret@host/db\"",
            Err(
                "4:7: [store]: `url` has unsupported scheme \"mysql\"; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
        check_url(
            "url = \"ideamill.db\"",
            Err(
                "4:7: [store]: `url` is not a url; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
        check_url(
            "url = \"sqlite://?mode=ro\"",
            Err(
                "4:7: [store]: `url` names no database file; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
    }
}
