//! Spans as the exporter takes them: finished, with their ids, times,
//! attributes and events. The ids of an item's spans are derived here, so
//! that a job's span can name the item's root span as its parent without
//! reading it from anywhere.

use std::fmt;

/// A W3C trace id: 16 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id: 8 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// From 32 hex digits (how the store keeps it); `None` for anything
    /// else and for the all-zero id, which W3C calls invalid.
    pub fn parse(hex: &str) -> Option<TraceId> {
        let bytes = from_hex::<16>(hex)?;
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// Whether a trace of this id is kept at `ratio` (0 to 1): the same
    /// answer in every process, so an item's spans are kept or dropped
    /// together (the rule of OpenTelemetry's `TraceIdRatioBased` sampler,
    /// on the id's last 8 bytes, the random ones).
    pub fn sampled(&self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        let n = u64::from_be_bytes(low) >> 1;
        // The float-to-int cast saturates, which is what a ratio near 1 needs.
        n < (ratio * (1u64 << 63) as f64) as u64
    }

    /// The id of the item's root span: fixed by the trace id (a hash of
    /// it), so that every attempt span, in any process, can name it.
    pub fn item_span(&self) -> SpanId {
        SpanId::derived(self, b"item")
    }
}

impl SpanId {
    /// A random span id.
    pub fn random() -> SpanId {
        loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }

    /// A span id that is a function of `trace` and `what` (FNV-1a, 64 bits:
    /// ids need to be distinct, not secret).
    pub fn derived(trace: &TraceId, what: &[u8]) -> SpanId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in trace.0.iter().chain(what) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SpanId(if h == 0 { 1 } else { h }.to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

fn from_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let hex = hex.as_bytes();
    if hex.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The W3C `traceparent` of a span (sampled): what a child process reads
/// from `TRACEPARENT` to join the trace.
pub fn traceparent(trace: &TraceId, span: &SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Attr {
    fn from(v: &str) -> Attr {
        Attr::Str(v.to_owned())
    }
}
impl From<String> for Attr {
    fn from(v: String) -> Attr {
        Attr::Str(v)
    }
}
impl From<i64> for Attr {
    fn from(v: i64) -> Attr {
        Attr::Int(v)
    }
}
impl From<u32> for Attr {
    fn from(v: u32) -> Attr {
        Attr::Int(i64::from(v))
    }
}
impl From<u64> for Attr {
    fn from(v: u64) -> Attr {
        Attr::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Attr {
    fn from(v: f64) -> Attr {
        Attr::Float(v)
    }
}
impl From<bool> for Attr {
    fn from(v: bool) -> Attr {
        Attr::Bool(v)
    }
}

/// OTLP's span kinds that ideamill uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the mill.
    Internal,
    /// A call to another service (a model provider).
    Client,
}

/// How a span ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanStatus {
    /// Nothing to say.
    Unset,
    /// It failed, and why.
    Error(String),
}

/// Something that happened during a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// What (`ideamill.retry`, `ideamill.gate.rejected`, …).
    pub name: String,
    /// Its details.
    pub attributes: Vec<(String, Attr)>,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent, `None` for a trace's root.
    pub parent: Option<SpanId>,
    /// What it is.
    pub name: String,
    /// Internal work or a call out.
    pub kind: SpanKind,
    /// Start and end, in nanoseconds since the epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Its attributes.
    pub attributes: Vec<(String, Attr)>,
    /// What happened during it.
    pub events: Vec<SpanEvent>,
    /// Its status.
    pub status: SpanStatus,
}

/// Milliseconds since the epoch (how the store keeps time) as nanoseconds.
pub fn ms_to_ns(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

impl SpanRecord {
    /// A span of `trace` from `start_ms` to `end_ms`, internal, with no
    /// attributes yet.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        parent: Option<SpanId>,
        name: impl Into<String>,
        start_ms: i64,
        end_ms: i64,
    ) -> SpanRecord {
        SpanRecord {
            trace_id,
            span_id,
            parent,
            name: name.into(),
            kind: SpanKind::Internal,
            start_ns: ms_to_ns(start_ms),
            end_ns: ms_to_ns(end_ms.max(start_ms)),
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    /// Adds an attribute.
    pub fn attr(&mut self, key: &str, value: impl Into<Attr>) -> &mut SpanRecord {
        self.attributes.push((key.to_owned(), value.into()));
        self
    }

    /// Adds an event at `at_ms`.
    pub fn event(&mut self, at_ms: i64, name: &str, attributes: Vec<(String, Attr)>) {
        self.events.push(SpanEvent {
            at_ms,
            name: name.to_owned(),
            attributes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_derive() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        let t = TraceId::parse(hex).unwrap();
        assert_eq!(t.to_string(), hex);
        assert_eq!(TraceId::parse("00000000000000000000000000000000"), None);
        assert_eq!(TraceId::parse("4bf92f"), None);
        assert_eq!(TraceId::parse("zzf92f3577b34da6a3ce929d0e0e4736"), None);
        assert_eq!(t.item_span(), t.item_span());
        assert_ne!(t.item_span(), SpanId::derived(&t, b"other"));
        assert_eq!(
            traceparent(&t, &SpanId([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn sampling_keeps_about_the_ratio_and_all_or_nothing() {
        assert!(TraceId([1; 16]).sampled(1.0));
        assert!(!TraceId([1; 16]).sampled(0.0));
        let kept = (0..10_000u32)
            .filter(|i| {
                let mut b = [7u8; 16];
                b[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                TraceId(b).sampled(0.25)
            })
            .count();
        assert!((2000..3000).contains(&kept), "{kept}");
    }
}
