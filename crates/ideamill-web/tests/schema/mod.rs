//! A validator for the part of JSON Schema that `openapi.json` uses: `type`
//! (one or a list), `properties`, `required`, `additionalProperties`,
//! `items`, `enum`, `const`, `oneOf`, `minimum`, `maximum` and `$ref` into the same
//! document. Annotations (`description`, `examples`, `default`, `format`)
//! are ignored. Any other keyword is an error, so that the document cannot
//! use a rule this validator would silently skip.

use serde_json::Value;

/// Keywords that say nothing about validity.
const ANNOTATIONS: &[&str] = &["description", "examples", "example", "default", "format"];

/// Everything wrong with `value` against `schema`, each as `path: problem`;
/// empty when it conforms. `doc` is the document `$ref`s point into.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(doc, schema, value, "$", &mut errors);
    errors
}

/// The schema a local `$ref` (`#/a/b`) names.
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are supported, not {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} names nothing in the document"))
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(rules) = schema.as_object() else {
        errors.push(format!("{at}: the schema is not an object: {schema}"));
        return;
    };
    if let Some(reference) = rules.get("$ref") {
        let reference = reference.as_str().unwrap_or_default();
        check(doc, resolve(doc, reference), value, at, errors);
    }
    for (keyword, rule) in rules {
        match keyword.as_str() {
            "$ref" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => panic!("{at}: `type` is {rule}"),
                };
                if !types.iter().any(|t| is_type(value, t)) {
                    errors.push(format!(
                        "{at}: expected {}, found {}",
                        types.join(" or "),
                        short(value)
                    ));
                }
            }
            "enum" => {
                let allowed = rule.as_array().expect("`enum` is a list");
                if !allowed.contains(value) {
                    errors.push(format!("{at}: {} is not one of {rule}", short(value)));
                }
            }
            "const" => {
                if value != rule {
                    errors.push(format!("{at}: {} is not {rule}", short(value)));
                }
            }
            "minimum" | "maximum" => {
                let bound = rule.as_f64().expect("a bound is a number");
                if let Some(n) = value.as_f64()
                    && (if keyword == "minimum" {
                        n < bound
                    } else {
                        n > bound
                    })
                {
                    errors.push(format!("{at}: {n} is beyond the {keyword} {bound}"));
                }
            }
            "properties" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                for (name, property) in rule.as_object().expect("`properties` is an object") {
                    if let Some(v) = object.get(name) {
                        check(doc, property, v, &format!("{at}.{name}"), errors);
                    }
                }
            }
            "required" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                for name in rule.as_array().expect("`required` is a list") {
                    let name = name.as_str().expect("a required name is a string");
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: the required field `{name}` is missing"));
                    }
                }
            }
            "additionalProperties" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                let known = rules.get("properties").and_then(Value::as_object);
                for (name, v) in object {
                    if known.is_some_and(|k| k.contains_key(name)) {
                        continue;
                    }
                    match rule {
                        Value::Bool(false) => {
                            errors.push(format!("{at}: the field `{name}` is not in the schema"))
                        }
                        Value::Bool(true) => {}
                        extra => check(doc, extra, v, &format!("{at}.{name}"), errors),
                    }
                }
            }
            "items" => {
                if let Some(list) = value.as_array() {
                    for (i, v) in list.iter().enumerate() {
                        check(doc, rule, v, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            "oneOf" => {
                let branches = rule.as_array().expect("`oneOf` is a list");
                let matching = branches
                    .iter()
                    .filter(|b| validate(doc, b, value).is_empty())
                    .count();
                if matching != 1 {
                    errors.push(format!(
                        "{at}: {} matches {matching} of the {} `oneOf` schemas, not exactly one",
                        short(value),
                        branches.len()
                    ));
                }
            }
            other if ANNOTATIONS.contains(&other) => {}
            other => panic!("{at}: the keyword `{other}` is not supported by this validator"),
        }
    }
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown type `{other}`"),
    }
}

fn short(value: &Value) -> String {
    let s = value.to_string();
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// Object schemas (with `properties`) reachable from `schema` that could
/// let a field through unnoticed: without `additionalProperties: false`, or
/// with a property that is not `required` (every field of an answer is
/// always written, `null` when absent).
pub fn loose_objects(doc: &Value, schema: &Value, at: &str, found: &mut Vec<String>) {
    let Some(rules) = schema.as_object() else {
        return;
    };
    if let Some(reference) = rules.get("$ref").and_then(Value::as_str) {
        loose_objects(doc, resolve(doc, reference), reference, found);
    }
    if let Some(properties) = rules.get("properties").and_then(Value::as_object) {
        if rules.get("additionalProperties") != Some(&Value::Bool(false)) {
            found.push(format!("{at}: no `additionalProperties: false`"));
        }
        let required: Vec<&str> = rules
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, property) in properties {
            if !required.contains(&name.as_str()) {
                found.push(format!("{at}: `{name}` is not required"));
            }
            loose_objects(doc, property, &format!("{at}.{name}"), found);
        }
    }
    if let Some(items) = rules.get("items") {
        loose_objects(doc, items, &format!("{at}[]"), found);
    }
    if let Some(branches) = rules.get("oneOf").and_then(Value::as_array) {
        for b in branches {
            loose_objects(doc, b, at, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::validate;

    #[test]
    fn the_validator_finds_what_is_wrong() {
        let doc = json!({"components": {"schemas": {
            "Thing": {
                "type": "object",
                "required": ["id", "tag"],
                "additionalProperties": false,
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "tag": {"type": ["string", "null"], "enum": ["a", "b", null]},
                    "sure": {"const": true},
                    "parts": {"type": "array", "items": {"type": "number"}},
                    "usage": {"oneOf": [{"type": "object"}, {"type": "null"}]}
                }
            }
        }}});
        let thing = json!({"$ref": "#/components/schemas/Thing"});
        let check = |value: serde_json::Value, want: &[&str]| {
            let mut found = validate(&doc, &thing, &value);
            found.sort();
            let mut want = want.to_vec();
            want.sort();
            assert_eq!(found, want, "{value}");
        };
        check(
            json!({"id": 1, "tag": null, "parts": [1, 2.5], "usage": {}}),
            &[],
        );
        check(json!({"id": 2, "tag": "b", "sure": true}), &[]);
        check(
            json!({"id": 2, "tag": "b", "sure": 1}),
            &["$.sure: 1 is not true"],
        );
        check(
            json!({"tag": "a", "colour": 1}),
            &[
                "$: the required field `id` is missing",
                "$: the field `colour` is not in the schema",
            ],
        );
        check(
            json!({"id": 0, "tag": "c"}),
            &[
                "$.id: 0 is beyond the minimum 1",
                "$.tag: \"c\" is not one of [\"a\",\"b\",null]",
            ],
        );
        check(
            json!({"id": 1.5, "tag": 3, "parts": ["x"], "usage": 1}),
            &[
                "$.id: expected integer, found 1.5",
                "$.parts[0]: expected number, found \"x\"",
                "$.tag: expected string or null, found 3",
                "$.tag: 3 is not one of [\"a\",\"b\",null]",
                "$.usage: 1 matches 0 of the 2 `oneOf` schemas, not exactly one",
            ],
        );
        check(json!([]), &["$: expected object, found []"]);
    }

    #[test]
    #[should_panic(expected = "the keyword `pattern` is not supported")]
    fn a_keyword_it_does_not_know_is_an_error() {
        validate(&json!({}), &json!({"pattern": "^a"}), &json!("a"));
    }
}
