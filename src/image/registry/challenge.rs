//! `WWW-Authenticate` challenges (RFC 7235): `Bearer realm="...",service="...",scope="..."` or
//! `Basic realm="..."`. Quoted values may hold commas (`scope="repository:a:pull,push"`) and
//! backslash escapes, so this is a small tokenizer rather than a split on ','.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased: "bearer", "basic".
    pub scheme: String,
    /// Parameter names lowercased; values as sent.
    pub params: BTreeMap<String, String>,
}

/// Every challenge in one header value, in order. Malformed parts are skipped, never fatal: the
/// caller reports "unauthorized" when no usable challenge remains.
pub(crate) fn parse(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < s.len() && set.contains(&s[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, b" \t,");
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && !b" \t,=".contains(&s[i]) {
            i += 1;
        }
        let token = &header[start..i];
        skip(&mut i, b" \t");
        if i < s.len() && s[i] == b'=' {
            i += 1;
            skip(&mut i, b" \t");
            let value = if i < s.len() && s[i] == b'"' {
                quoted(header, &mut i)
            } else {
                let start = i;
                while i < s.len() && !b" \t,".contains(&s[i]) {
                    i += 1;
                }
                header[start..i].to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else if !token.is_empty() {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a quoted-string starting at the opening quote; `i` ends past the closing quote.
fn quoted(header: &str, i: &mut usize) -> String {
    let s = header.as_bytes();
    let mut out = Vec::new();
    *i += 1;
    while *i < s.len() {
        match s[*i] {
            b'"' => {
                *i += 1;
                break;
            }
            b'\\' if *i + 1 < s.len() => {
                out.push(s[*i + 1]);
                *i += 2;
            }
            b => {
                out.push(b);
                *i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_docker_hub_bearer() {
        let c = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            params(&c[0]),
            vec![
                ("realm", "https://auth.docker.io/token"),
                ("scope", "repository:library/nginx:pull"),
                ("service", "registry.docker.io"),
            ]
        );
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let c = parse(
            r#"Bearer realm = "https://r/token?a=1,b=2" , scope="repository:a/b:pull,push repository:c:pull", service=plain, error="insufficient_scope", x="q\"uote""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].params["realm"], "https://r/token?a=1,b=2");
        assert_eq!(
            c[0].params["scope"],
            "repository:a/b:pull,push repository:c:pull"
        );
        assert_eq!(c[0].params["service"], "plain");
        assert_eq!(c[0].params["error"], "insufficient_scope");
        assert_eq!(c[0].params["x"], "q\"uote");
    }

    #[test]
    fn parses_basic_and_several_challenges() {
        let c = parse(r#"Basic realm="Registry Realm", Bearer realm="https://t",service="s""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["service"], "s");
        assert_eq!(parse("BASIC")[0].scheme, "basic");
        assert!(parse("").is_empty());
        assert!(parse(" , ,").is_empty());
        // Unterminated quotes and stray '=' are tolerated.
        let c = parse(r#"Bearer realm="https://t"#);
        assert_eq!(c[0].params["realm"], "https://t");
        assert_eq!(parse("=x Bearer")[0].scheme, "bearer");
    }
}
