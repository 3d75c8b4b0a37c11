//! Two-way strategic merge patches: the smallest patch that turns `old` into `new`, as
//! apimachinery's `CreateTwoWayMergePatch` makes them for the kubelet's status updates.
//!
//! Maps are diffed key by key (a removed key becomes `null`); lists with a merge key (pod
//! conditions by `type`, container statuses by `name`, IPs by `ip`...) are diffed item by item,
//! with `$setElementOrder/<list>` giving the new order and `$patch: delete` for items that went;
//! every other list is replaced whole. An empty object means nothing changed.

use serde_json::{Map, Value};

/// The merge key of the lists in pod and node status that the API server merges item by item
/// (their `patchStrategy:"merge"` tags); container statuses are atomic lists, replaced whole.
fn merge_key(list: &str) -> Option<&'static str> {
    match list {
        "conditions" | "addresses" => Some("type"),
        "podIPs" | "hostIPs" => Some("ip"),
        _ => None,
    }
}

/// The patch from `old` to `new` (both objects); `{}` when they are equal.
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => Value::Object(diff_maps(o, n)),
        _ => new.clone(),
    }
}

/// True when the patch changes nothing.
pub fn is_empty(patch: &Value) -> bool {
    patch.as_object().is_some_and(Map::is_empty)
}

fn diff_maps(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, nv) in new {
        match old.get(k) {
            None => {
                if !nv.is_null() {
                    out.insert(k.clone(), nv.clone());
                }
            }
            Some(ov) if ov == nv => {}
            Some(ov) => match (ov, nv) {
                (Value::Object(o), Value::Object(n)) => {
                    out.insert(k.clone(), Value::Object(diff_maps(o, n)));
                }
                (Value::Array(o), Value::Array(n)) => match merge_key(k) {
                    Some(key) if keyed(o, key) && keyed(n, key) => {
                        let (items, order) = diff_keyed_list(o, n, key);
                        if !items.is_empty() || order_changed(o, n, key) {
                            out.insert(format!("$setElementOrder/{}", k), Value::Array(order));
                        }
                        if !items.is_empty() {
                            out.insert(k.clone(), Value::Array(items));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), nv.clone());
                    }
                },
                _ => {
                    out.insert(k.clone(), nv.clone());
                }
            },
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

/// Every item is an object with a string or other scalar under `key`.
fn keyed(list: &[Value], key: &str) -> bool {
    list.iter()
        .all(|i| i.get(key).is_some_and(|v| !v.is_object() && !v.is_array()))
}

fn order_changed(old: &[Value], new: &[Value], key: &str) -> bool {
    let keys = |l: &[Value]| l.iter().map(|i| i[key].clone()).collect::<Vec<_>>();
    let (o, n) = (keys(old), keys(new));
    // Only the relative order of items present in both matters; additions and deletions show up
    // as items of the patch anyway.
    let common_o: Vec<&Value> = o.iter().filter(|k| n.contains(k)).collect();
    let common_n: Vec<&Value> = n.iter().filter(|k| o.contains(k)).collect();
    common_o != common_n
}

fn diff_keyed_list(old: &[Value], new: &[Value], key: &str) -> (Vec<Value>, Vec<Value>) {
    let mut items = Vec::new();
    let mut order = Vec::new();
    for n in new {
        let id = &n[key];
        let mut single = Map::new();
        single.insert(key.to_string(), id.clone());
        order.push(Value::Object(single));
        match old.iter().find(|o| &o[key] == id) {
            Some(o) if o == n => {}
            Some(o) => {
                let mut d = match (o, n) {
                    (Value::Object(om), Value::Object(nm)) => diff_maps(om, nm),
                    _ => Map::new(),
                };
                d.insert(key.to_string(), id.clone());
                items.push(Value::Object(d));
            }
            None => items.push(n.clone()),
        }
    }
    for o in old {
        let id = &o[key];
        if !new.iter().any(|n| &n[key] == id) {
            let mut del = Map::new();
            del.insert("$patch".into(), Value::String("delete".into()));
            del.insert(key.to_string(), id.clone());
            items.push(Value::Object(del));
        }
    }
    (items, order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_objects_give_an_empty_patch() {
        let v = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(is_empty(&diff(&v, &v)));
    }

    #[test]
    fn scalars_maps_and_removals() {
        let old = json!({"phase": "Pending", "message": "x", "nested": {"a": 1, "b": 2}});
        let new = json!({"phase": "Running", "nested": {"a": 1, "b": 3}});
        assert_eq!(
            diff(&old, &new),
            json!({"phase": "Running", "message": null, "nested": {"b": 3}})
        );
    }

    #[test]
    fn container_statuses_are_sent_whole() {
        // An atomic list: the server replaces it, so a partial item would lose fields.
        let old = json!({"containerStatuses": [
            {"name": "a", "state": {"running": {"startedAt": "t1"}}, "restartCount": 0},
            {"name": "b", "state": {"running": {"startedAt": "t1"}}, "restartCount": 0}]});
        let new = json!({"containerStatuses": [
            {"name": "a", "state": {"running": {"startedAt": "t1"}}, "restartCount": 0},
            {"name": "b", "state": {"terminated": {"exitCode": 1}}, "restartCount": 0}]});
        assert_eq!(diff(&old, &new), new);
    }

    #[test]
    fn changed_keyed_items_null_what_went() {
        let old = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "x"}]});
        let new = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(
            diff(&old, &new),
            json!({
                "$setElementOrder/conditions": [{"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": null}]
            })
        );
    }

    #[test]
    fn keyed_lists_add_delete_and_reorder() {
        let old = json!({"conditions": [
            {"type": "A", "status": "True"}, {"type": "B", "status": "True"}, {"type": "Gone", "status": "True"}]});
        let new = json!({"conditions": [
            {"type": "B", "status": "True"}, {"type": "A", "status": "True"}, {"type": "New", "status": "False"}]});
        assert_eq!(
            diff(&old, &new),
            json!({
                "$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}, {"type": "New"}],
                "conditions": [{"type": "New", "status": "False"}, {"$patch": "delete", "type": "Gone"}]
            })
        );
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let old = json!({"images": [{"names": ["a"]}]});
        let new = json!({"images": [{"names": ["b"]}]});
        assert_eq!(diff(&old, &new), new);
    }
}
