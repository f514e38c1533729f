//! OpenTelemetry traces for ideamill: what a span is ([`span`]), its OTLP
//! protobuf encoding ([`proto`], hand-written: the few messages a trace
//! export needs, with opentelemetry-proto's field numbers, instead of the
//! SDK, prost and tonic), and the [`exporter`] that sends spans in batches
//! on a task of its own.
//!
//! An item is one trace; its id is random, made by the store when the item
//! is added and kept on the item (`items.trace_id`), so every process that
//! works on the item puts its spans in the same trace without asking anyone.

pub mod exporter;
pub mod proto;
pub mod span;

pub use exporter::{Stats, Telemetry, stats};
pub use span::{Attr, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};
