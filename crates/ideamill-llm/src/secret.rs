//! `Secret`: an API key that never prints itself.

use std::fmt;

/// An already-resolved secret (an API key). Its `Debug` and `Display` print
/// `***`, so a config or an error that holds one can be logged safely; only
/// [`Secret::expose`] gives the value, at the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key read from the environment or the config.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret's value, for the request header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

/// Replaces every occurrence of the key in `text` with `***`: servers
/// sometimes echo the key they were given in their error messages.
pub(crate) fn redact(text: &str, key: Option<&Secret>) -> String {
    match key {
        Some(key) if !key.0.is_empty() && text.contains(key.0.as_str()) => {
            text.replace(key.0.as_str(), "***")
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_itself() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "sk-very-secret");
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        let s = Secret::new("sk-1");
        assert_eq!(redact("bad key sk-1 (sk-1)", Some(&s)), "bad key *** (***)");
        assert_eq!(redact("nothing here", Some(&s)), "nothing here");
        assert_eq!(redact("sk-1", None), "sk-1");
        assert_eq!(redact("abc", Some(&Secret::new(""))), "abc");
    }
}
