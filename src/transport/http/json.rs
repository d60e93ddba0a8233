//! Whether a payload is one JSON value that can be embedded in a line of
//! newline-delimited JSON as is (`HttpConfig::embed_json`).

/// Deepest nesting taken: deeper payloads go as strings, and no payload
/// can exhaust the stack of the check or of a receiver's parser.
const MAX_DEPTH: u32 = 128;

/// Whether `b` is exactly one JSON value (RFC 8259, whitespace around it
/// allowed) on one line: valid UTF-8, no line break anywhere, no lone
/// UTF-16 surrogate in a `\u` escape, nested at most [`MAX_DEPTH`] deep.
pub(crate) fn is_one_line_json(b: &[u8]) -> bool {
    if b.iter().any(|&c| c == b'\n' || c == b'\r') || std::str::from_utf8(b).is_err() {
        return false;
    }
    let mut p = Parser { b, i: 0 };
    p.ws();
    if !p.value(0) {
        return false;
    }
    p.ws();
    p.i == b.len()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            return true;
        }
        false
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            return true;
        }
        false
    }

    fn value(&mut self, depth: u32) -> bool {
        match self.peek() {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth + 1),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: u32) -> bool {
        self.i += 1;
        self.ws();
        if self.eat(b'}') {
            return true;
        }
        loop {
            if self.peek() != Some(b'"') || !self.string() {
                return false;
            }
            self.ws();
            if !self.eat(b':') {
                return false;
            }
            self.ws();
            if !self.value(depth) {
                return false;
            }
            self.ws();
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
            self.ws();
        }
    }

    fn array(&mut self, depth: u32) -> bool {
        self.i += 1;
        self.ws();
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            self.ws();
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
            self.ws();
        }
    }

    /// Four hex digits of a `\u` escape, as a code unit.
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let s = std::str::from_utf8(digits).ok()?;
        let v = u32::from_str_radix(s, 16).ok().filter(|_| s.bytes().all(|c| c.is_ascii_hexdigit()))?;
        self.i += 4;
        Some(v)
    }

    fn string(&mut self) -> bool {
        self.i += 1;
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.i += 1;
                    return true;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            match self.hex4() {
                                // A high surrogate must have a low one
                                // right after it; a low one alone is none.
                                Some(0xD800..=0xDBFF) => {
                                    if !(self.literal(b"\\u") && matches!(self.hex4(), Some(0xDC00..=0xDFFF))) {
                                        return false;
                                    }
                                }
                                Some(0xDC00..=0xDFFF) | None => return false,
                                Some(_) => {}
                            }
                        }
                        _ => return false,
                    }
                }
                Some(c) if c < 0x20 => return false,
                Some(_) => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i > start
    }

    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.eat(b'.') && !self.digits() {
            return false;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if !self.digits() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_values_on_one_line_and_nothing_else() {
        for ok in [
            &br#"{"a":[1,-2.5e+3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],"b":{}}"#[..],
            b" 0 ",
            b"\"\"",
            b"[]",
            "\"é日本\"".as_bytes(),
        ] {
            assert!(is_one_line_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"[1,]",
            b"01",
            b"1.",
            b"-",
            b"1e",
            b"tru",
            b"{} {}",
            b"\"a\nb\"",
            b"{\n\"a\":1}",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\x\"",
            b"\"\x01\"",
            b"\"\xff\"",
            b"NaN",
            b"'a'",
        ] {
            assert!(!is_one_line_json(bad), "{}", String::from_utf8_lossy(bad));
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(is_one_line_json(deep(128).as_bytes()));
        assert!(!is_one_line_json(deep(129).as_bytes()));
        assert!(!is_one_line_json(deep(100_000).as_bytes()), "no stack overflow, just refused");
    }

    proptest! {
        /// Against serde_json on short strings of JSON's own characters.
        #[test]
        fn agrees_with_serde_json(s in "[\\[\\]{}\",: 0-9eE.+\\-tru fals nl\\\\/\\\\u00dDc8aé]{0,14}") {
            let ours = is_one_line_json(s.as_bytes());
            match serde_json::from_str::<serde_json::Value>(&s) {
                Ok(_) => prop_assert!(ours, "serde_json takes {s:?}"),
                // serde_json refuses a number too large for an f64 that
                // the grammar allows.
                Err(e) if e.to_string().contains("number out of range") => {}
                Err(e) => prop_assert!(!ours, "serde_json refuses {s:?}: {e}"),
            }
        }
    }
}
