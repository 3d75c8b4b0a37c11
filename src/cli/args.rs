//! A small flag parser: `--flag value`, `--flag=value`, boolean `--flag`, short `-f`, positionals.
//! A repeated flag keeps every value (`get_all`); `get` returns the last, like most CLIs.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Args {
    flags: BTreeMap<String, Vec<String>>,
    pub positional: Vec<String>,
}

impl Args {
    /// `valued` lists the flags that take a value; every other flag is boolean.
    pub fn parse(args: &[String], valued: &[&str], boolean: &[&str]) -> Result<Args, String> {
        let mut flags = BTreeMap::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                positional.extend(it.by_ref().cloned());
                break;
            }
            if let Some(body) = a
                .strip_prefix("--")
                .or_else(|| a.strip_prefix('-').filter(|b| !b.is_empty()))
            {
                let (name, inline) = match body.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (body, None),
                };
                if valued.contains(&name) {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("flag --{} needs a value", name))?,
                    };
                    flags
                        .entry(name.to_string())
                        .or_insert_with(Vec::new)
                        .push(v);
                } else if boolean.contains(&name) {
                    flags.insert(
                        name.to_string(),
                        vec![inline.unwrap_or_else(|| "true".into())],
                    );
                } else {
                    return Err(format!("unknown flag {:?}", a));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { flags, positional })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .get(name)
            .and_then(|v| v.last())
            .map(|s| s.as_str())
    }

    /// Every value of a repeatable valued flag, in command-line order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.flags
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Sets `name` to `value` unless the command line gave it (a configuration file's value).
    pub fn set_default(&mut self, name: &str, value: String) {
        self.flags
            .entry(name.to_string())
            .or_insert_with(|| vec![value]);
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let v: Vec<String> = ["--root-dir=/r", "-o", "json", "-f", "pod", "--", "-x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&v, &["root-dir", "o"], &["f"]).unwrap();
        assert_eq!(a.get("root-dir"), Some("/r"));
        assert_eq!(a.get("o"), Some("json"));
        assert!(a.flag("f"));
        assert_eq!(a.positional, vec!["pod", "-x"]);
        assert!(Args::parse(&["--bogus".to_string()], &[], &[])
            .unwrap_err()
            .contains("--bogus"));
        assert!(Args::parse(&["--root-dir".to_string()], &["root-dir"], &[]).is_err());
        let v: Vec<String> = ["--ca=a", "x", "--ca", "b", "--o", "1", "--o=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&v, &["ca", "o"], &[]).unwrap();
        assert_eq!(a.get_all("ca"), vec!["a", "b"]);
        assert_eq!(a.get("o"), Some("2"));
        assert!(a.get_all("none").is_empty());
    }
}
