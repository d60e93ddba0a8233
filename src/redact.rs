//! Secrets kept out of what ringship shows: an endpoint's user info, query
//! string and header values never reach errors, health, metrics, `Debug`
//! output or logs. An address is shown redacted ([`url`]), and any text
//! from a transport or user code is scrubbed of the endpoint's secrets
//! ([`Secrets::scrub`]) before it is kept.

/// What stands for a secret.
const MASK: &str = "***";

/// Secrets shorter than this are not scrubbed from free text: masking
/// every `a` or `42` would garble the message and hide nothing.
const MIN_SECRET: usize = 4;

/// `address` with its user info masked, each query value masked (the
/// names stay) and any fragment dropped: `https://***@host/ingest?api_key=***`.
/// Anything that is not a URL with a scheme is shown as it is.
pub(crate) fn url(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (before_query, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
    let (authority, path) = before_query.find('/').map_or((before_query, ""), |at| before_query.split_at(at));
    let host = authority.rsplit_once('@').map_or(authority.to_owned(), |(_, host)| format!("{MASK}@{host}"));
    let mut out = format!("{scheme}://{host}{path}");
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(MASK);
                }
                None => out.push_str(MASK),
            }
        }
    }
    out
}

/// The secrets of endpoints: user info (whole, and the password alone),
/// the query string and each value in it, header values and each word of
/// them (`Bearer abc...`), as written and percent-decoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Secrets {
    /// Longest first, so that a secret inside another is masked with it.
    words: Vec<String>,
}

/// At most this many secrets are kept (of the endpoints given most
/// recently).
const MAX_SECRETS: usize = 256;

impl Secrets {
    /// Adds the secrets of an endpoint.
    pub(crate) fn add(&mut self, address: &str, headers: &[(String, String)]) {
        let mut found = Vec::new();
        if let Some((_, rest)) = address.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                found.push(userinfo.to_owned());
                found.extend(userinfo.split_once(':').map(|(_, password)| password.to_owned()));
                found.extend(userinfo.split_once(':').map(|(user, _)| user.to_owned()));
            }
            let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
            if let Some((_, query)) = rest.split_once('?') {
                found.push(query.to_owned());
                found.extend(query.split('&').map(|pair| pair.split_once('=').map_or(pair, |(_, v)| v).to_owned()));
            }
        }
        for (_, value) in headers {
            found.push(value.clone());
            found.extend(value.split([' ', ',', ';', '=']).map(str::to_owned));
        }
        let decoded: Vec<String> = found.iter().filter_map(|s| percent_decoded(s)).collect();
        found.extend(decoded);
        for word in found {
            let word = word.trim().to_owned();
            if word.len() >= MIN_SECRET && !self.words.contains(&word) {
                self.words.push(word);
            }
        }
        if self.words.len() > MAX_SECRETS {
            self.words.drain(..self.words.len() - MAX_SECRETS);
        }
        self.words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    }

    /// `text` with every secret masked.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for word in &self.words {
            if out.contains(word.as_str()) {
                out = out.replace(word.as_str(), MASK);
            }
        }
        out
    }
}

/// `s` percent-decoded, if that changes it and gives UTF-8.
fn percent_decoded(s: &str) -> Option<String> {
    if !s.contains('%') && !s.contains('+') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|d| d != s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_user_info_query_values_and_fragments() {
        for (address, shown) in [
            ("http://svc:s3cret@host/ingest?api_key=abc123", "http://***@host/ingest?api_key=***"),
            ("https://token@host:8443/v1/logs", "https://***@host:8443/v1/logs"),
            ("https://host/v1/logs?a=1&b&c=x%20y#frag", "https://host/v1/logs?a=***&***&c=***"),
            ("https://u:p@w@host", "https://***@host"),
            ("https://host", "https://host"),
            ("relp://logs:2514", "relp://logs:2514"),
            ("host:514", "host:514"),
        ] {
            assert_eq!(url(address), shown, "{address}");
        }
    }

    #[test]
    fn text_is_scrubbed_of_every_form_of_a_secret() {
        let mut s = Secrets::default();
        s.add(
            "http://svc:s3cr%40t@host/ingest?api_key=abc123&tenant=acme",
            &[("Authorization".into(), "Bearer tok_9f8e7d".into()), ("X-Id".into(), "42".into())],
        );
        let text = "connecting to http://svc:s3cr%40t@host/ingest?api_key=abc123&tenant=acme failed: s3cr@t, \
                    header Bearer tok_9f8e7d, key abc123, id 42";
        let clean = s.scrub(text);
        for secret in ["s3cr%40t", "s3cr@t", "abc123", "tok_9f8e7d", "api_key=abc123&tenant=acme"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        // Short values are left: masking them would garble the text.
        assert!(clean.contains("id 42"), "{clean}");
        assert!(clean.contains("@host/ingest"), "{clean}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever the secrets (user, password, query value, a header's
        /// token, percent-encoded or not) and wherever an error quotes
        /// them, as written or decoded, none survives the scrub.
        #[test]
        fn no_secret_survives_the_scrub(
            user in "[A-Za-z0-9_.~-]{4,12}",
            password in "[A-Za-z0-9_.~%+-]{4,16}",
            key in "[A-Za-z0-9_.~%-]{4,16}",
            token in "[A-Za-z0-9_.~-]{4,24}",
            prefix in "[ -~]{0,20}",
            suffix in "[ -~]{0,20}",
        ) {
            let address = format!("https://{user}:{password}@host:8443/ingest?api_key={key}&n=1");
            let headers = [("Authorization".to_owned(), format!("Bearer {token}"))];
            let mut s = Secrets::default();
            s.add(&address, &headers);
            let forms: Vec<String> = [&user, &password, &key, &token]
                .iter()
                .flat_map(|w| [(*w).clone(), percent_decoded(w).unwrap_or_else(|| (*w).clone())])
                .filter(|w| !w.contains('*') && w.trim().len() >= MIN_SECRET)
                .collect();
            let text = format!(
                "{prefix} sending to {address} with {:?}: {} refused ({}) {suffix}",
                headers,
                forms.join(" / "),
                forms.concat()
            );
            let clean = s.scrub(&text);
            for form in &forms {
                proptest::prop_assert!(!clean.contains(form.trim()), "{form:?} survives in {clean:?}");
            }
        }
    }
}
