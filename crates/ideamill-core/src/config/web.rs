//! `[web]`: the dashboard and the HTTP API, served by `ideamill run` on
//! `[health] listen`.

use std::path::{Path, PathBuf};

use super::section::{Got, Section, is_http_url};

/// The access token's file, in `engine.data_dir`.
pub const DEFAULT_TOKEN_FILE: &str = "token";

/// `[web]`: access to the dashboard and API: token and public URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The access token (`ideamill init` writes one, mode 0600). Required
    /// when the listener is not on a loopback address. Default
    /// `<data_dir>/token`.
    pub token_file: PathBuf,
    /// Ask for the token on loopback too. Default false.
    pub require_token: bool,
    /// The dashboard's address as people reach it (e.g. behind a proxy), for
    /// links in alerts. Optional.
    pub url: Option<String>,
}

pub(super) fn parse(s: &mut Section<'_>, root: &Path, data_dir: &Path) -> WebConfig {
    WebConfig {
        token_file: s.path("token_file", root, data_dir.join(DEFAULT_TOKEN_FILE)),
        require_token: s.boolean("require_token").or(false),
        url: match s.string("url") {
            Got::Ok(url, span) => {
                if !is_http_url(&url) {
                    s.invalid("url", span, "must start with http:// or https://");
                }
                Some(url.trim_end_matches('/').to_owned())
            }
            Got::Absent | Got::Bad => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::testing::{STAGE, check_errors, config};

    #[test]
    fn web_table() {
        let c = config(&format!(
            "[web]\ntoken_file = \"secrets/token\"\nrequire_token = true\nurl = \"https://mill.example.org/\"\n{STAGE}"
        ));
        assert_eq!(
            c.web,
            WebConfig {
                token_file: PathBuf::from("/proj/secrets/token"),
                require_token: true,
                url: Some("https://mill.example.org".into()),
            }
        );
        assert_eq!(
            config(STAGE).web.token_file,
            PathBuf::from("/proj/.ideamill/token")
        );
        check_errors(
            &format!("[web]\nurl = \"mill.local\"\ntoken = \"x\"\n{STAGE}"),
            &[
                "2:7: [web]: `url` must start with http:// or https://",
                "3:1: unknown key `token` in [web]; expected one of: token_file, require_token, url",
            ],
        );
    }
}
