//! JSON string escaping, shared by the HTTP transport's NDJSON, the OTLP
//! JSON encoding and the front-ends' records; and text from elsewhere (a
//! receiver's answer, an error) made one short line for an error message.
//! Builds without the HTTP transport use only some of it.
#![cfg_attr(not(feature = "http"), allow(dead_code))]

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` escaped for a JSON string: quote, backslash, and every
/// control character (C0 and DEL).
pub(crate) fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Characters of a refusal's answer kept in the error message.
pub(crate) const MAX_REASON: usize = 200;

/// `text` (a receiver's answer, an error) as one short line for an error
/// message, which ends up in health's `last_error` and in logs: the text of
/// an HTML page without its tags (and without its `script` and `style`
/// elements), each run of whitespace and control characters (line breaks
/// too) as one space, and at most [`MAX_REASON`] characters, `…` after a
/// cut. Crude, and meant to be: it is for a person to read.
pub(crate) fn sanitize(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let html = ["<html", "<!doctype", "</"].iter().any(|m| lower.contains(*m));
    let mut out = String::new();
    let mut space = false;
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        if html && c == '<' {
            // To the end of the tag, or of the element for a script or a
            // style. (`lower` has the same character boundaries as `text`.)
            let from = ["script", "style"]
                .iter()
                .find(|name| lower[i + 1..].starts_with(**name))
                .and_then(|name| lower[i..].find(&format!("</{name}")))
                .map_or(i, |at| i + at);
            i = text[from..].find('>').map_or(text.len(), |at| from + at + 1);
            space = true;
            continue;
        }
        i += c.len_utf8();
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    let cut = out.char_indices().nth(MAX_REASON).map(|(at, _)| at);
    match cut {
        Some(cut) => format!("{}…", out[..cut].trim_end()),
        None => out,
    }
}
