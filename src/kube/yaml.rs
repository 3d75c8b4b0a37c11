//! YAML documents to JSON values, for Kubernetes manifests. Built directly from the parser's
//! events (no intermediate tree) so that aliases can be budgeted: yaml-rust2's own loader copies
//! an alias's node at each use, and a "billion laughs" document would take the agent's memory.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// Nodes one document may expand to, aliases included. Real manifests have a few thousand.
pub const MAX_NODES: usize = 200_000;

/// Parses every document of `text` (empty documents come back as `Value::Null`).
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| format!("YAML syntax: {}", e))?;
    match builder.error {
        Some(e) => Err(e),
        None => Ok(builder.docs),
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        nodes: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        nodes: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<Value>,
    stack: Vec<Frame>,
    /// Anchored nodes and how many nodes each expands to.
    anchors: std::collections::HashMap<usize, (Value, usize)>,
    nodes: usize,
    root: Option<Value>,
    error: Option<String>,
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.handle(ev) {
            self.error = Some(format!(
                "YAML line {} column {}: {}",
                mark.line(),
                mark.col() + 1,
                e
            ));
        }
    }
}

impl Builder {
    fn handle(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::DocumentStart => {
                self.nodes = 0;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                self.docs.push(self.root.take().unwrap_or(Value::Null));
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                anchor,
                nodes: 1,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                map: Map::new(),
                key: None,
                anchor,
                nodes: 1,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, nodes) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        nodes,
                    }) => (Value::Array(items), anchor, nodes),
                    Some(Frame::Map {
                        map,
                        key: None,
                        anchor,
                        nodes,
                    }) => (Value::Object(map), anchor, nodes),
                    Some(Frame::Map { key: Some(k), .. }) => {
                        return Err(format!("key {:?} has no value", k))
                    }
                    None => return Err("unbalanced collection end".into()),
                };
                self.insert(value, anchor, nodes)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref())?;
                self.insert(value, anchor, 1)?;
            }
            Event::Alias(id) => {
                let (value, nodes) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("alias to unknown anchor {}", id))?;
                self.insert(value, 0, nodes)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
        Ok(())
    }

    fn insert(&mut self, value: Value, anchor: usize, nodes: usize) -> Result<(), String> {
        self.nodes += nodes;
        if self.nodes > MAX_NODES {
            return Err(format!(
                "document expands to more than {} nodes (an alias bomb?)",
                MAX_NODES
            ));
        }
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq {
                items, nodes: n, ..
            }) => {
                items.push(value);
                *n += nodes;
            }
            Some(Frame::Map {
                map, key, nodes: n, ..
            }) => {
                *n += nodes;
                match key.take() {
                    None => *key = Some(key_string(value)?),
                    Some(k) => {
                        if map.contains_key(&k) {
                            return Err(format!("duplicate key {:?}", k));
                        }
                        map.insert(k, value);
                    }
                }
            }
        }
        Ok(())
    }
}

fn key_string(v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".into()),
        other => Err(format!("mapping keys must be scalars, found {}", other)),
    }
}

/// Plain scalars are resolved as YAML 1.2's core schema does (null, booleans, numbers);
/// quoted ones and `!!str` stay strings.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text));
    }
    if let Some(t) = tag {
        if t.handle == "tag:yaml.org,2002:" && t.suffix == "str" {
            return Ok(Value::String(text));
        }
    }
    Ok(match Yaml::from_str(&text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => match r.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(text),
        },
        _ => Value::String(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_and_scalars() {
        let docs = documents("a: 1\nb: [true, null, 1.5, '2', x]\n---\n---\nc: {d: e}\n").unwrap();
        assert_eq!(
            docs,
            vec![
                json!({"a": 1, "b": [true, null, 1.5, "2", "x"]}),
                Value::Null,
                json!({"c": {"d": "e"}})
            ]
        );
    }

    #[test]
    fn aliases_expand_within_budget() {
        let docs = documents("base: &b {image: busybox}\nc1: *b\nc2: *b\n").unwrap();
        assert_eq!(docs[0]["c2"], json!({"image": "busybox"}));
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        let text = include_str!("../../tests/data/alias-bomb.yaml");
        let t = std::time::Instant::now();
        let err = documents(text).unwrap_err();
        assert!(err.contains("alias bomb"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(documents("a: [unclosed")
            .unwrap_err()
            .contains("YAML syntax"));
        assert!(documents("a: 1\na: 2\n")
            .unwrap_err()
            .contains("duplicate key"));
        assert!(documents("? [complex]\n: v\n")
            .unwrap_err()
            .contains("mapping keys must be scalars"));
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(documents(&deep).is_err());
    }
}
