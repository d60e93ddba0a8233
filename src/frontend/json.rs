//! The front-ends' record encoding: one JSON object per record, written
//! straight into a reused buffer (docs/FRONTENDS.md gives the fields).
//!
//! A record longer than the ring takes is encoded again with string values
//! cut (`cap`) and optional members left out past `limit`; it then carries
//! `"truncated":true`.

// Each front-end uses the parts its records need.
#![cfg_attr(not(all(feature = "tracing", feature = "opentelemetry")), allow(dead_code))]

use std::fmt::{self, Write as _};

use crate::escape::json_escape;

/// A position to roll an optional member back to.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    len: usize,
    first: bool,
}

/// A JSON object being written.
pub(crate) struct Json {
    pub(crate) buf: Vec<u8>,
    /// Most bytes of one string value (before escaping).
    pub(crate) cap: usize,
    /// Optional members that end past this length are left out.
    limit: usize,
    /// A string value was cut.
    cut: bool,
    /// An optional member was left out.
    omitted: bool,
    /// Nothing written yet in the innermost open object or array.
    first: bool,
}

/// Strings shorter than this are never cut: a cap below it saves too
/// little to be worth the information lost.
const MIN_CAP: usize = 32;

/// Room kept past `limit` for closing brackets and the truncation marker.
const CLOSING: usize = 24;

impl Json {
    pub(crate) const fn new() -> Self {
        Json { buf: Vec::new(), cap: usize::MAX, limit: usize::MAX, cut: false, omitted: false, first: true }
    }

    /// Starts a record with string values cut at `cap` bytes and optional
    /// members limited to `limit` bytes in all.
    fn start(&mut self, cap: usize, limit: usize) {
        self.buf.clear();
        self.cap = cap;
        self.limit = limit;
        self.cut = false;
        self.omitted = false;
        self.first = true;
        self.buf.push(b'{');
    }

    /// Ends the record: the truncation marker if anything was cut or left
    /// out, and the closing brace.
    pub(crate) fn finish(&mut self) {
        if self.truncated() {
            self.key("truncated");
            self.buf.extend_from_slice(b"true");
        }
        self.buf.push(b'}');
    }

    /// Whether a value was cut or a member left out.
    pub(crate) fn truncated(&self) -> bool {
        self.cut || self.omitted
    }

    /// Encodes a record with `encode` (which writes its required members
    /// first, then optional ones, and calls [`finish`](Self::finish)) into
    /// at most `max` bytes if it can: first whole, then with ever shorter
    /// string values. It keeps the first attempt that needs no member left
    /// out, else the one with the longest values that fits. The result is
    /// in `buf`, which may still exceed `max` if the required members do.
    /// `encode` runs once per attempt: a value's `Debug` or `Display` with
    /// side effects repeats them.
    pub(crate) fn encode_within(&mut self, max: usize, encode: &dyn Fn(&mut Json)) {
        self.start(usize::MAX, usize::MAX);
        encode(self);
        if self.buf.len() <= max {
            return;
        }
        let limit = max.saturating_sub(CLOSING);
        let mut cap = (max / 2).max(MIN_CAP);
        // The attempt with the longest values that fits, members left out.
        let mut fitting: Option<(Vec<u8>, bool)> = None;
        loop {
            self.start(cap, limit);
            encode(self);
            let fits = self.buf.len() <= max;
            if fits && !self.omitted {
                return;
            }
            if fits && fitting.is_none() {
                fitting = Some((self.buf.clone(), self.cut));
            }
            if cap == MIN_CAP {
                if let Some((buf, cut)) = fitting {
                    self.buf = buf;
                    self.cut = cut;
                    self.omitted = true;
                }
                return;
            }
            cap = (cap / 4).max(MIN_CAP);
        }
    }

    /// Where an optional member starts, to [`keep`](Self::keep) or
    /// [`rollback`](Self::rollback) to.
    pub(crate) fn mark(&self) -> Mark {
        Mark { len: self.buf.len(), first: self.first }
    }

    /// Keeps what was written since `m` if it ends within the limit;
    /// otherwise removes it and notes the record truncated. Returns
    /// whether it was kept.
    pub(crate) fn keep(&mut self, m: Mark) -> bool {
        if self.buf.len() <= self.limit {
            return true;
        }
        self.rollback(m);
        self.omitted = true;
        false
    }

    /// Removes what was written since `m`.
    pub(crate) fn rollback(&mut self, m: Mark) {
        self.buf.truncate(m.len);
        self.first = m.first;
    }

    /// Ends the object opened after `m`, or removes it (its key too) if
    /// nothing went into it.
    pub(crate) fn close_or_rollback(&mut self, m: Mark) {
        if self.first {
            self.rollback(m);
        } else {
            self.close_object();
        }
    }

    /// Whether nothing was written in the innermost open object or array.
    pub(crate) fn is_empty(&self) -> bool {
        self.first
    }

    /// The separator before a member or element.
    fn sep(&mut self) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
    }

    /// A member's key (never cut).
    pub(crate) fn key(&mut self, k: &str) {
        self.sep();
        self.buf.push(b'"');
        json_escape(&mut self.buf, k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Before an array element.
    pub(crate) fn elem(&mut self) {
        self.sep();
    }

    /// An object value; members follow.
    pub(crate) fn open_object(&mut self) {
        self.buf.push(b'{');
        self.first = true;
    }

    /// Ends the innermost object.
    pub(crate) fn close_object(&mut self) {
        self.buf.push(b'}');
        self.first = false;
    }

    /// An array value; elements follow, each after [`elem`](Self::elem).
    pub(crate) fn open_array(&mut self) {
        self.buf.push(b'[');
        self.first = true;
    }

    /// Ends the innermost array.
    pub(crate) fn close_array(&mut self) {
        self.buf.push(b']');
        self.first = false;
    }

    /// A value already encoded.
    pub(crate) fn raw(&mut self, value: &[u8]) {
        self.buf.extend_from_slice(value);
    }

    /// A string value, cut at `cap` bytes (on a character boundary).
    pub(crate) fn str(&mut self, s: &str) {
        let mut end = s.len();
        if end > self.cap {
            end = self.cap;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.cut = true;
        }
        self.buf.push(b'"');
        json_escape(&mut self.buf, &s.as_bytes()[..end]);
        self.buf.push(b'"');
    }

    /// Bytes as a string value: valid UTF-8 as text, each other byte as
    /// the four characters `\xNN`; cut at `cap` input bytes, before a
    /// character the cut would split.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        let b = if b.len() > self.cap {
            self.cut = true;
            &b[..utf8_floor(b, self.cap)]
        } else {
            b
        };
        self.buf.push(b'"');
        for chunk in b.utf8_chunks() {
            json_escape(&mut self.buf, chunk.valid().as_bytes());
            for &x in chunk.invalid() {
                self.buf.extend_from_slice(b"\\\\x");
                self.buf.push(HEX[usize::from(x >> 4)]);
                self.buf.push(HEX[usize::from(x & 15)]);
            }
        }
        self.buf.push(b'"');
    }

    /// A value formatted with `Display` or `Debug` (`format_args!`), as a
    /// string value cut at `cap` bytes.
    pub(crate) fn fmt(&mut self, args: fmt::Arguments<'_>) {
        if let Some(s) = args.as_str() {
            return self.str(s);
        }
        self.buf.push(b'"');
        let left = self.cap;
        let mut w = Escaping { json: self, left };
        // Formatting into the buffer fails only if a value's own `fmt`
        // fails; what it wrote stays.
        let _ = w.write_fmt(args);
        self.buf.push(b'"');
    }

    /// An unsigned integer.
    pub(crate) fn u64(&mut self, v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = v;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[i..]);
    }

    /// A signed integer.
    pub(crate) fn i64(&mut self, v: i64) {
        if v < 0 {
            self.buf.push(b'-');
        }
        self.u64(v.unsigned_abs());
    }

    /// Integers past 64 bits.
    pub(crate) fn int(&mut self, v: impl fmt::Display) {
        let _ = write!(Raw(&mut self.buf), "{v}");
    }

    /// A float: a JSON number when finite, else the string `NaN`, `inf` or
    /// `-inf` (JSON has no such numbers).
    pub(crate) fn f64(&mut self, v: f64) {
        if v.is_finite() {
            let _ = write!(Raw(&mut self.buf), "{v:?}");
        } else {
            let _ = write!(Raw(&mut self.buf), "\"{v}\"");
        }
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// Nanoseconds since the Unix epoch as an RFC 3339 UTC timestamp with
    /// nanoseconds: `"2026-12-07T14:43:20.123456789Z"`.
    pub(crate) fn timestamp(&mut self, nanos: u64) {
        let secs = nanos / 1_000_000_000;
        let (y, mo, d) = crate::civil::civil_from_days(secs / 86_400);
        let s = secs % 86_400;
        let mut out = *b"\"0000-00-00T00:00:00.000000000Z\"";
        put_digits(&mut out[1..5], y);
        put_digits(&mut out[6..8], mo);
        put_digits(&mut out[9..11], d);
        put_digits(&mut out[12..14], s / 3600);
        put_digits(&mut out[15..17], s / 60 % 60);
        put_digits(&mut out[18..20], s % 60);
        put_digits(&mut out[21..30], nanos % 1_000_000_000);
        self.buf.extend_from_slice(&out);
    }

    /// Bytes as lowercase hex in a string value (trace and span ids).
    pub(crate) fn hex(&mut self, b: &[u8]) {
        self.buf.push(b'"');
        for &x in b {
            self.buf.push(HEX[usize::from(x >> 4)]);
            self.buf.push(HEX[usize::from(x & 15)]);
        }
        self.buf.push(b'"');
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `at`, moved back before a UTF-8 continuation byte's character (by at
/// most three bytes: past that, the bytes are not UTF-8 there anyway).
pub(crate) fn utf8_floor(b: &[u8], at: usize) -> usize {
    let mut end = at.min(b.len());
    let floor = end.saturating_sub(3);
    while end > floor && end < b.len() && b[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// Writes the low decimal digits of `v` into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Formats into a string value, escaping, and dropping what comes past
/// `left` bytes.
struct Escaping<'a> {
    json: &'a mut Json,
    left: usize,
}

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut end = s.len();
        if end > self.left {
            end = self.left;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.json.cut = true;
            // Nothing more fits: no later piece may squeeze in after a
            // character that was cut.
            self.left = 0;
        } else {
            self.left -= end;
        }
        json_escape(&mut self.json.buf, &s.as_bytes()[..end]);
        Ok(())
    }
}

/// Formats into the buffer as is (numbers).
struct Raw<'a>(&'a mut Vec<u8>);

impl fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl Fn(&mut Json)) -> String {
        let mut j = Json::new();
        j.start(usize::MAX, usize::MAX);
        f(&mut j);
        j.finish();
        String::from_utf8(j.buf).unwrap()
    }

    #[test]
    fn control_characters_quotes_and_backslashes_are_escaped() {
        let s = encoded(|j| {
            j.key("m");
            j.str("a\"b\\c\nd\te\u{1}f\u{7f}g\u{2028}é");
        });
        assert_eq!(s, r#"{"m":"a\"b\\c\nd\te\u0001f\u007fg"#.to_owned() + "\u{2028}é\"}");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["m"], "a\"b\\c\nd\te\u{1}f\u{7f}g\u{2028}é");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_backslash_x() {
        let s = encoded(|j| {
            j.key("b");
            j.bytes(b"ok\xff\xfe\"\xe2\x82");
        });
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["b"], "ok\\xff\\xfe\"\\xe2\\x82");
    }

    #[test]
    fn numbers_floats_and_formatted_values() {
        let s = encoded(|j| {
            for (k, v) in [("z", 0), ("max", u64::MAX)] {
                j.key(k);
                j.u64(v);
            }
            j.key("neg");
            j.i64(i64::MIN);
            j.key("big");
            j.int(u128::MAX);
            j.key("f");
            j.f64(0.1);
            j.key("e");
            j.f64(1e300);
            j.key("nan");
            j.f64(f64::NAN);
            j.key("inf");
            j.f64(f64::NEG_INFINITY);
            j.key("d");
            j.fmt(format_args!("{:?}", Some("x\n")));
        });
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["z"], 0);
        assert_eq!(v["max"], u64::MAX);
        assert_eq!(v["neg"], i64::MIN);
        assert!(s.contains(&format!("\"big\":{},", u128::MAX)), "{s}");
        assert_eq!(v["f"], 0.1);
        assert_eq!(v["e"], 1e300);
        assert_eq!((&v["nan"], &v["inf"]), (&"NaN".into(), &"-inf".into()));
        assert_eq!(v["d"], "Some(\"x\\n\")");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        // Values from `date -u -d @SECS +%FT%T`.
        for (nanos, want) in [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400_000_000_001, "2000-02-29T00:00:00.000000001Z"),
            (1_796_654_600_123_456_789, "2026-12-07T14:43:20.123456789Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999999Z"),
            (4_107_542_400_000_000_000, "2100-03-01T00:00:00.000000000Z"),
        ] {
            let mut j = Json::new();
            j.timestamp(nanos);
            assert_eq!(String::from_utf8(j.buf).unwrap(), format!("\"{want}\""));
        }
    }

    #[test]
    fn a_record_past_the_limit_has_values_cut_and_says_so() {
        let big = "é".repeat(5000);
        let encode = |j: &mut Json| {
            j.key("message");
            j.str(&big);
            j.key("fields");
            j.open_object();
            for i in 0..50 {
                let m = j.mark();
                j.key(&format!("f{i}"));
                j.fmt(format_args!("{}", "x".repeat(300)));
                j.keep(m);
            }
            j.close_object();
            j.finish();
        };
        let mut j = Json::new();
        j.encode_within(100_000, &encode);
        assert!(!j.truncated());
        let whole = j.buf.clone();
        assert!(whole.len() > 20_000);
        for max in [4096, 1000, 300] {
            j.encode_within(max, &encode);
            assert!(j.buf.len() <= max, "{} > {max}", j.buf.len());
            let v: serde_json::Value = serde_json::from_slice(&j.buf).unwrap();
            assert_eq!(v["truncated"], true);
            let m = v["message"].as_str().unwrap();
            assert!(!m.is_empty() && big.starts_with(m), "cut on a character boundary");
        }
    }
}
