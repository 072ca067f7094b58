//! Span fields for the JSON log format, written straight into the span's buffer.
//!
//! The log layer formats a span's fields when the span is created, whether or not anything is
//! logged inside it; with span export on, every gRPC call opens a `grpc` span (without export,
//! calls open none: see `call_context`). tracing-subscriber's own `JsonFields` formats by
//! building a `serde_json` map and serialising it, a share of a server's CPU that `perf` showed
//! under `ferry-bench --only middleware` (services/BENCHMARKS.md). [`JsonSpanFields`] writes the same JSON object with no intermediate values.
//! The JSON event formatter parses it back only when an event inside the span is logged.

use std::fmt::{self, Write as _};

use tracing::{
    field::{Field, Visit},
    span::Record,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FormatFields, FormattedFields, format::Writer},
};

/// Formats span fields as one JSON object (`{"trace_id":"…","method":"…"}`).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    /// Builds the object in a local buffer sized for a call span and hands it over in one
    /// write: the writer is a `dyn fmt::Write` into an empty `String`, so writing piece by
    /// piece cost a virtual call per piece and four or five reallocations per span.
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut object = String::with_capacity(SPAN_FIELDS_CAPACITY);
        object.push('{');
        let mut body = ObjectBody { out: &mut object, empty: true, result: Ok(()) };
        fields.record(&mut body);
        body.result?;
        object.push('}');
        writer.write_str(&object)
    }

    /// Fields recorded after creation (`span.record(..)`) join the same object; a key recorded
    /// twice appears twice and the later value wins when the object is parsed.
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // `current` is an object this formatter wrote: reopen it before its closing brace.
        if current.fields.pop() != Some('}') {
            return Err(fmt::Error);
        }
        let empty = current.fields.ends_with('{');
        let result = {
            let mut writer = current.as_writer();
            let mut object = ObjectBody { out: &mut writer, empty, result: Ok(()) };
            fields.record(&mut object);
            object.result
        };
        current.fields.push('}');
        result
    }
}

/// Bytes a call span's fields take (`trace_id` and a method path), with room to spare.
const SPAN_FIELDS_CAPACITY: usize = 160;

/// Writes `"name":value` pairs, comma separated, into an object already opened.
struct ObjectBody<'a, W: fmt::Write> {
    out: &'a mut W,
    empty: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> ObjectBody<'_, W> {
    /// Records the first error and skips every field after it.
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.write_entry(field, value);
        }
    }

    fn write_entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) -> fmt::Result {
        if !self.empty {
            self.out.write_char(',')?;
        }
        self.empty = false;
        write_json_str(self.out, field.name())?;
        self.out.write_char(':')?;
        value(self.out)
    }
}

impl<W: fmt::Write> Visit for ObjectBody<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| write_json_str(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; those become strings, as serde_json's `Value` would not
        // hold them at all.
        if value.is_finite() {
            self.entry(field, |out| write!(out, "{value}"));
        } else {
            self.entry(field, |out| write_json_string(out, format_args!("{value}")));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| write_json_string(out, format_args!("{value:?}")));
    }
}

/// Writes `text` as a JSON string: quoted, with `"`, `\` and control characters escaped
/// (RFC 8259 §7), formatting straight into `out`.
fn write_json_string<W: fmt::Write>(out: &mut W, text: fmt::Arguments<'_>) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_fmt(text)?;
    out.write_char('"')
}

/// [`write_json_string`] for text already at hand, without `fmt`'s machinery.
pub(crate) fn write_json_str<W: fmt::Write>(out: &mut W, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// A `fmt::Write` that JSON-escapes what passes through it.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean_from = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[clean_from..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            clean_from = i + 1;
        }
        self.0.write_str(&s[clean_from..])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The JSON log lines `emit` produces in the services' log format.
    fn log_lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        log_lines_through(tracing_subscriber::layer::Identity::new(), emit)
    }

    /// [`log_lines`] with `filter` in front of the log layer, as the services install theirs.
    pub(crate) fn log_lines_through<F>(filter: F, emit: impl FnOnce()) -> Vec<serde_json::Value>
    where
        F: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(crate::telemetry::json_log_layer(buffer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("log output is UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect()
    }

    #[test]
    fn span_fields_of_every_kind_reach_the_log_line_as_json_values() {
        let lines = log_lines(|| {
            let span = tracing::info_span!(
                "grpc",
                trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736",
                method = "/ferry.inventory.v1.InventoryService/GetStock",
                count = 3u64,
                delta = -2i64,
                ok = true,
                ratio = 0.5f64,
                nan = f64::NAN,
                debug = ?Some("x"),
            );
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let span = &lines[0]["span"];
        assert_eq!(span["name"], "grpc");
        assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["method"], "/ferry.inventory.v1.InventoryService/GetStock");
        assert_eq!(span["count"], 3);
        assert_eq!(span["delta"], -2);
        assert_eq!(span["ok"], true);
        assert_eq!(span["ratio"], 0.5);
        assert_eq!(span["nan"], "NaN");
        assert_eq!(span["debug"], "Some(\"x\")");
    }

    #[test]
    fn quotes_backslashes_and_control_characters_survive_the_round_trip() {
        let nasty = "a \"quoted\" \\path\\ with\nnewline,\ttab, \r, \u{1} and \u{1f}, ünïcødé ✓";
        let lines = log_lines(|| {
            let span = tracing::info_span!("grpc", method = nasty, shown = %nasty);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(lines[0]["span"]["method"], nasty);
        assert_eq!(lines[0]["span"]["shown"], nasty);
    }

    #[test]
    fn fields_recorded_after_creation_join_the_span_object() {
        let lines = log_lines(|| {
            let span = tracing::info_span!(
                "grpc",
                trace_id = tracing::field::Empty,
                method = "/m",
                peer = tracing::field::Empty
            );
            span.record("trace_id", "abc");
            span.record("peer", 7u64);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let span = &lines[0]["span"];
        assert_eq!(
            (&span["trace_id"], &span["method"], &span["peer"]),
            (&"abc".into(), &"/m".into(), &7.into())
        );
    }

    #[test]
    fn a_span_with_no_values_at_creation_still_takes_recorded_ones() {
        let lines = log_lines(|| {
            let span = tracing::info_span!("grpc", trace_id = tracing::field::Empty);
            span.record("trace_id", "late");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(lines[0]["span"]["trace_id"], "late");
    }
}
