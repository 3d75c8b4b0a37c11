//! CNI network configuration: the first valid `*.conflist`, `*.conf` or `*.json` file of the
//! configuration directory in lexical order (what libcni and the kubelet pick), validated so that
//! a mistake is reported with the file and the field rather than as a plugin's failure later.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The spec versions whose result format tinylet reads (0.3.x and 0.4.0 share 1.0.0's shape).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Files larger than this are not network configurations.
const MAX_CONF_BYTES: u64 = 1 << 20;

/// A validated network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's own configuration (an object with at least `type`).
    pub plugins: Vec<Value>,
    /// Where it was read from (for messages).
    pub file: PathBuf,
}

impl ConfList {
    /// The list as JSON, as it is kept in a pod's network record.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
            "file": self.file,
        })
    }

    /// Reads back what `to_json` wrote (a pod's record), validating it again.
    pub fn from_record(v: &Value) -> Result<ConfList, String> {
        let file = PathBuf::from(v["file"].as_str().unwrap_or("(network record)"));
        parse(v, &file, true)
    }

    /// Whether spec version `cniVersion` knows CHECK (0.4.0 and later).
    pub fn has_check(&self) -> bool {
        matches!(self.cni_version.as_str(), "0.4.0" | "1.0.0")
    }
}

/// The configuration files of `dir`, in the order libcni considers them.
pub fn candidates(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Loads the first usable configuration of `dir`. `Ok(None)`: there is none at all; an error
/// names the first file found and what is wrong with it when no file is usable.
pub fn load_dir(dir: &Path) -> Result<Option<ConfList>, String> {
    let mut first_error = None;
    for f in candidates(dir) {
        match load_file(&f) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                log::warn!("CNI configuration {}: {}; skipped", f.display(), e);
                first_error.get_or_insert(format!("{}: {}", f.display(), e));
            }
        }
    }
    match first_error {
        Some(e) => Err(format!(
            "no valid CNI configuration in {} ({})",
            dir.display(),
            e
        )),
        None => Ok(None),
    }
}

pub fn load_file(f: &Path) -> Result<ConfList, String> {
    let meta = std::fs::metadata(f).map_err(|e| e.to_string())?;
    if meta.len() > MAX_CONF_BYTES {
        return Err(format!("larger than {} bytes", MAX_CONF_BYTES));
    }
    let text = std::fs::read(f).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("invalid JSON: {}", e))?;
    let is_list =
        f.extension().and_then(|e| e.to_str()) == Some("conflist") || v.get("plugins").is_some();
    parse(&v, f, is_list)
}

/// Validates a list (`is_list`) or a single plugin's configuration, which becomes a list of one.
fn parse(v: &Value, file: &Path, is_list: bool) -> Result<ConfList, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("name: Required value")?;
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or("cniVersion: Required value")?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "cniVersion: Unsupported value: {:?}: supported values: {}",
            version,
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let plugins: Vec<Value> = if is_list {
        let list = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("plugins: Required value (a list)")?;
        if list.is_empty() {
            return Err("plugins: Required value (the list is empty)".into());
        }
        list.clone()
    } else {
        vec![v.clone()]
    };
    for (i, p) in plugins.iter().enumerate() {
        let t = p
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("plugins[{}].type: Required value", i))?;
        valid_type(t).map_err(|e| format!("plugins[{}].type: {}", i, e))?;
    }
    Ok(ConfList {
        name: name.to_string(),
        cni_version: version.to_string(),
        disable_check: obj.get("disableCheck").and_then(Value::as_bool) == Some(true),
        plugins,
        file: file.to_path_buf(),
    })
}

/// A plugin type is a file name in the plugin directories, never a path.
pub fn valid_type(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !t.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value: {:?}: not a plugin name", t))
    }
}

/// The executable for plugin `t`: the first of `bin_dirs` that holds it.
pub fn find_plugin(t: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf, String> {
    valid_type(t)?;
    bin_dirs
        .iter()
        .map(|d| d.join(t))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "failed to find plugin {:?} in path [{}]",
                t,
                bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tinylet-cniconf-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn first_valid_file_in_lexical_order_and_single_plugin_conf() {
        let d = dir();
        assert_eq!(load_dir(&d).unwrap(), None);
        std::fs::write(d.join("README"), "not a conf").unwrap();
        std::fs::write(
            d.join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        let c = load_dir(&d).unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.plugins.len()), ("b", 1));
        assert_eq!(c.plugins[0]["type"], "bridge");
        std::fs::write(
            d.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let c = load_dir(&d).unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.plugins.len()), ("a", 2));
        assert!(c.has_check());
        let back = ConfList::from_record(&c.to_json()).unwrap();
        assert_eq!(back, c);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_name_file_and_field() {
        for (text, want) in [
            ("{", "invalid JSON"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[]}"#,
                "name: Required value",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersion: Required",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersion: Unsupported value: \"9.9.9\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "plugins: Required",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"ipam":{}}]}"#,
                "plugins[0].type: Required",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "plugins[0].type: Invalid value",
            ),
        ] {
            let d = dir();
            std::fs::write(d.join("10-x.conflist"), text).unwrap();
            let e = load_dir(&d).unwrap_err();
            assert!(
                e.contains("10-x.conflist") && e.contains(want),
                "{}: {}",
                want,
                e
            );
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn plugins_are_found_by_name_only() {
        let d = dir();
        std::fs::write(d.join("bridge"), "").unwrap();
        assert_eq!(
            find_plugin("bridge", &[PathBuf::from("/nonexistent"), d.clone()]).unwrap(),
            d.join("bridge")
        );
        assert!(find_plugin("portmap", std::slice::from_ref(&d))
            .unwrap_err()
            .contains("failed to find plugin \"portmap\""));
        assert!(find_plugin("../bridge", std::slice::from_ref(&d)).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
