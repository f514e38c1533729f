//! The OTLP trace export request in protobuf, encoded by hand: the few
//! messages of `opentelemetry/proto/collector/trace/v1` and its imports that
//! a span needs, with their field numbers. Encoding protobuf is small
//! (varints, lengths, fixed 64-bit times); a generated codec would bring
//! prost and its derive for these 150 lines. The end-to-end test decodes
//! what this writes with the official definitions.

use crate::span::{Attr, SpanKind, SpanRecord, SpanStatus};

/// Resource and scope of every span a process sends.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `service.name` and the configured resource attributes.
    pub resource: Vec<(String, Attr)>,
    /// The instrumentation scope's name and version.
    pub scope: (String, String),
}

// Wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A nested message: encoded into a scratch buffer first for its length.
fn message(out: &mut Vec<u8>, field: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    bytes(out, field, &inner);
}

fn fixed64(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`; `AnyValue { string_value = 1;
/// bool_value = 2; int_value = 3; double_value = 4 }`.
fn key_value(out: &mut Vec<u8>, field: u64, k: &str, v: &Attr) {
    message(out, field, |kv| {
        bytes(kv, 1, k.as_bytes());
        message(kv, 2, |any| match v {
            Attr::Str(s) => bytes(any, 1, s.as_bytes()),
            Attr::Bool(b) => uint(any, 2, u64::from(*b)),
            // int64 is a two's-complement varint.
            Attr::Int(i) => uint(any, 3, *i as u64),
            Attr::Float(f) => fixed64(any, 4, f.to_bits()),
        });
    });
}

/// `Span`: trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
/// start_time_unix_nano = 7, end_time_unix_nano = 8, attributes = 9,
/// events = 11, status = 15, flags = 16.
fn span(out: &mut Vec<u8>, s: &SpanRecord) {
    message(out, 2, |m| {
        bytes(m, 1, &s.trace_id.0);
        bytes(m, 2, &s.span_id.0);
        if let Some(parent) = &s.parent {
            bytes(m, 4, &parent.0);
        }
        bytes(m, 5, s.name.as_bytes());
        let kind = match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Client => 3,
        };
        uint(m, 6, kind);
        fixed64(m, 7, s.start_ns);
        fixed64(m, 8, s.end_ns);
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        // Event: time_unix_nano = 1, name = 2, attributes = 3.
        for e in &s.events {
            message(m, 11, |ev| {
                fixed64(ev, 1, crate::span::ms_to_ns(e.at_ms));
                bytes(ev, 2, e.name.as_bytes());
                for (k, v) in &e.attributes {
                    key_value(ev, 3, k, v);
                }
            });
        }
        // Status: message = 2, code = 3 (0 unset, 2 error).
        if let SpanStatus::Error(why) = &s.status {
            message(m, 15, |st| {
                bytes(st, 2, why.as_bytes());
                uint(st, 3, 2);
            });
        }
        // flags = 16 (fixed32): W3C trace flags, sampled.
        key(m, 16, 5);
        m.extend_from_slice(&1u32.to_le_bytes());
    });
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`
/// with one `ResourceSpans { Resource resource = 1; repeated ScopeSpans
/// scope_spans = 2 }`, `Resource { attributes = 1 }`, `ScopeSpans {
/// InstrumentationScope scope = 1; repeated Span spans = 2 }` and
/// `InstrumentationScope { name = 1; version = 2 }`. No spans: an empty
/// request, which a collector answers like any other (`doctor`'s probe).
pub fn export_request(origin: &Origin, spans: &[SpanRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * spans.len().max(1));
    if spans.is_empty() {
        return out;
    }
    message(&mut out, 1, |rs| {
        message(rs, 1, |resource| {
            for (k, v) in &origin.resource {
                key_value(resource, 1, k, v);
            }
        });
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes(scope, 1, origin.scope.0.as_bytes());
                bytes(scope, 2, origin.scope.1.as_bytes());
            });
            for s in spans {
                span(ss, s);
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        let mut out = Vec::new();
        varint(&mut out, 150);
        assert_eq!(out, [0x96, 0x01]);
        let mut out = Vec::new();
        uint(&mut out, 3, -1i64 as u64);
        assert_eq!(out.len(), 1 + 10, "a negative int64 takes ten bytes");
        let mut out = Vec::new();
        bytes(&mut out, 2, b"testing");
        assert_eq!(out, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
    }
}
