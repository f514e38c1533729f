//! `[telemetry]`: OpenTelemetry traces sent over OTLP (HTTP/protobuf). Off
//! unless `otlp_endpoint` is set.

use std::collections::BTreeMap;
use std::fmt;

use super::section::{Got, Section, is_http_url};
use super::{REDACTED, redact_url_secret};

/// Default `service_name`: what backends list the mill's spans under.
pub const DEFAULT_SERVICE_NAME: &str = "ideamill";

/// Where one header's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Written in the config (`headers`).
    Literal(String),
    /// The name of an environment variable holding it (`headers_env`), read
    /// when the exporter starts, so the secret stays out of the file.
    Env(String),
}

impl fmt::Debug for HeaderValue {
    // A header is how collectors authenticate: its value never prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Literal(_) => f.write_str(REDACTED),
            HeaderValue::Env(var) => write!(f, "${var}"),
        }
    }
}

/// `[telemetry]`: traces. `Debug` shows no header value nor URL password.
#[derive(Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL; spans go to `<it>/v1/traces`.
    /// `None`: no traces (the default).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span. Default `ideamill`.
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, …).
    pub resource_attributes: BTreeMap<String, String>,
    /// The share of items traced, 0 to 1, decided per item from its trace
    /// id so every span of an item is kept or none. Default 1.
    pub sample_ratio: f64,
    /// Request headers, by name (authentication, tenant).
    pub headers: BTreeMap<String, HeaderValue>,
    /// Put prompts and completions on model-call spans. Default false: they
    /// may hold what the ideas hold.
    pub capture_content: bool,
    /// A link to a trace, with `{trace_id}` in it, for `show` and the
    /// dashboard.
    pub trace_url: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            resource_attributes: BTreeMap::new(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            capture_content: false,
            trace_url: None,
        }
    }
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redact_url_secret),
            )
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("sample_ratio", &self.sample_ratio)
            .field("headers", &self.headers)
            .field("capture_content", &self.capture_content)
            .field("trace_url", &self.trace_url)
            .finish()
    }
}

impl TelemetryConfig {
    /// The link to trace `trace_id`, when `trace_url` is set.
    pub fn trace_link(&self, trace_id: &str) -> Option<String> {
        self.trace_url
            .as_ref()
            .map(|t| t.replace("{trace_id}", trace_id))
    }
}

pub(super) fn parse(s: &mut Section<'_>) -> TelemetryConfig {
    let url = |s: &mut Section<'_>, key: &'static str| match s.string(key) {
        Got::Ok(url, span) => {
            if !is_http_url(&url) {
                s.invalid(key, span, "must start with http:// or https://");
                None
            } else {
                Some(url.into_owned())
            }
        }
        Got::Absent | Got::Bad => None,
    };
    let otlp_endpoint = url(s, "otlp_endpoint").map(|u| u.trim_end_matches('/').to_owned());
    let service_name = match s.string("service_name") {
        Got::Ok(name, span) if name.trim().is_empty() => {
            s.invalid("service_name", span, "must not be empty");
            DEFAULT_SERVICE_NAME.to_owned()
        }
        Got::Ok(name, _) => name.into_owned(),
        Got::Absent | Got::Bad => DEFAULT_SERVICE_NAME.to_owned(),
    };
    let resource_attributes = s.string_map("resource_attributes");
    let sample_ratio = match s.number("sample_ratio", 0.0) {
        Got::Ok(r, span) if r > 1.0 => {
            s.invalid(
                "sample_ratio",
                span,
                format_args!("must be between 0 and 1, found {r}"),
            );
            1.0
        }
        got => got.or(1.0),
    };
    let mut headers: BTreeMap<String, HeaderValue> = s
        .string_map("headers")
        .into_iter()
        .map(|(k, v)| (k, HeaderValue::Literal(v)))
        .collect();
    for (name, var) in s.string_map("headers_env") {
        headers.insert(name, HeaderValue::Env(var));
    }
    let capture_content = s.boolean("capture_content").or(false);
    let trace_url = match s.string("trace_url") {
        Got::Ok(t, span) => {
            if !is_http_url(&t) {
                s.invalid("trace_url", span, "must start with http:// or https://");
                None
            } else if !t.contains("{trace_id}") {
                s.invalid("trace_url", span, "must contain `{trace_id}`");
                None
            } else {
                Some(t.into_owned())
            }
        }
        Got::Absent | Got::Bad => None,
    };
    TelemetryConfig {
        otlp_endpoint,
        service_name,
        resource_attributes,
        sample_ratio,
        headers,
        capture_content,
        trace_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{STAGE, check_errors, config};

    #[test]
    fn telemetry_table() {
        let c = config(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nservice_name = \"mill-a\"\n\
             resource_attributes = {{ \"deployment.environment\" = \"prod\" }}\nsample_ratio = 0.5\n\
             headers = {{ \"x-scope-orgid\" = \"tenant-secret\" }}\nheaders_env = {{ authorization = \"OTLP_AUTH\" }}\n\
             capture_content = true\ntrace_url = \"https://tempo.example/trace/{{trace_id}}\"\n{STAGE}"
        ));
        let t = &c.telemetry;
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(t.service_name, "mill-a");
        assert_eq!(t.sample_ratio, 0.5);
        assert!(t.capture_content);
        assert_eq!(
            t.headers.get("authorization"),
            Some(&HeaderValue::Env("OTLP_AUTH".into()))
        );
        assert_eq!(
            t.trace_link("abc").as_deref(),
            Some("https://tempo.example/trace/abc")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("tenant-secret"), "{shown}");
        assert!(shown.contains("$OTLP_AUTH"), "{shown}");

        let off = config(STAGE).telemetry;
        assert_eq!(off, TelemetryConfig::default());
        assert_eq!(off.otlp_endpoint, None);
    }

    #[test]
    fn telemetry_errors() {
        check_errors(
            &format!(
                "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\nsample_ratio = 2\n\
                 trace_url = \"https://tempo.example/trace\"\nservice_name = \" \"\nheaders = {{ a = 1 }}\nspans = true\n{STAGE}"
            ),
            &[
                "2:17: [telemetry]: `otlp_endpoint` must start with http:// or https://",
                "3:16: [telemetry]: `sample_ratio` must be between 0 and 1, found 2",
                "4:13: [telemetry]: `trace_url` must contain `{trace_id}`",
                "5:16: [telemetry]: `service_name` must not be empty",
                "6:17: [telemetry]: `headers.a` must be a string, found integer",
                "7:1: unknown key `spans` in [telemetry]; expected one of: otlp_endpoint, service_name, resource_attributes, sample_ratio, headers, headers_env, capture_content, trace_url",
            ],
        );
    }
}
