//! A small flag parser: `--flag value`, `--flag=value`, boolean `--flag`, short `-f`, positionals.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Args {
    flags: BTreeMap<String, String>,
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
                    flags.insert(name.to_string(), v);
                } else if boolean.contains(&name) {
                    flags.insert(name.to_string(), inline.unwrap_or_else(|| "true".into()));
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
        self.flags.get(name).map(|s| s.as_str())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.get(name).is_some_and(|v| v == "true")
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
    }
}
