//! The evaluation suite: JSON lines, one idea with its hidden tests each
//! (`{"id", "idea", "tests", "notes"?, "difficulty"?}`), read strictly: any
//! problem stops the evaluation, named with its file and line.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// One idea of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Kebab-case, unique in the suite.
    pub id: String,
    pub idea: String,
    /// A Python unittest file that imports from `main`.
    pub tests: String,
}

const REQUIRED: &[&str] = &["id", "idea", "tests"];
const OPTIONAL: &[&str] = &["notes", "difficulty"];

/// The cases of `text`, read from `file` (for messages).
pub fn parse(text: &str, file: &Path) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    let mut lines_of: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let at = |problem: String| format!("{}:{n}: {problem}", file.display());
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(at("a line must be a JSON object".into()));
        };
        let case = case(&map).map_err(at)?;
        if let Some(first) = lines_of.insert(case.id.clone(), n) {
            return Err(at(format!(
                "the id `{}` is already used on line {first}",
                case.id
            )));
        }
        cases.push(case);
    }
    if cases.is_empty() {
        return Err(format!("{}: no ideas in the suite", file.display()));
    }
    Ok(cases)
}

fn case(map: &Map<String, Value>) -> Result<Case, String> {
    for key in map.keys() {
        if !REQUIRED.contains(&key.as_str()) && !OPTIONAL.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}`; keys: {}",
                [REQUIRED, OPTIONAL].concat().join(", ")
            ));
        }
    }
    let text = |key: &str| match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("`{key}` is empty")),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Err(format!("`{key}` is missing")),
    };
    for key in OPTIONAL {
        if map.get(*key).is_some_and(|v| !v.is_string()) {
            return Err(format!("`{key}` must be a string"));
        }
    }
    let id = text("id")?;
    if !is_kebab(&id) {
        return Err(format!(
            "the id `{id}` is not kebab-case (lowercase letters and digits joined by -)"
        ));
    }
    Ok(Case {
        id,
        idea: text("idea")?,
        tests: text("tests")?,
    })
}

fn is_kebab(id: &str) -> bool {
    id.split('-').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<&[&str], &str>) {
        let got = parse(text, Path::new("s.jsonl"))
            .map(|cases| cases.into_iter().map(|c| c.id).collect::<Vec<_>>());
        let expected = expected
            .map(|ids| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(str::to_owned);
        assert_eq!(got, expected, "{text}");
    }

    const A: &str = r#"{"id": "add-two", "idea": "add", "tests": "import unittest", "notes": "n"}"#;
    const B: &str =
        r#"{"id": "b2", "idea": "b", "tests": "from main import b", "difficulty": "easy"}"#;

    #[test]
    fn good_lines_in_order_blank_lines_skipped() {
        check(&format!("{A}\n\n{B}\n"), Ok(&["add-two", "b2"]));
        let cases = parse(A, Path::new("s")).unwrap();
        assert_eq!(
            cases[0],
            Case {
                id: "add-two".into(),
                idea: "add".into(),
                tests: "import unittest".into()
            }
        );
    }

    #[test]
    fn every_problem_names_the_file_and_line() {
        check(
            &format!("{A}\n{A}"),
            Err("s.jsonl:2: the id `add-two` is already used on line 1"),
        );
        check(
            &format!("{A}\n{{\"id\": \"x\""),
            Err("s.jsonl:2: invalid JSON: EOF while parsing an object at line 1 column 10"),
        );
        check("[1]", Err("s.jsonl:1: a line must be a JSON object"));
        check(
            r#"{"id": "x", "idea": "i"}"#,
            Err("s.jsonl:1: `tests` is missing"),
        );
        check(
            r#"{"id": "x", "idea": " ", "tests": "t"}"#,
            Err("s.jsonl:1: `idea` is empty"),
        );
        check(
            r#"{"id": 3, "idea": "i", "tests": "t"}"#,
            Err("s.jsonl:1: `id` must be a string"),
        );
        check(
            r#"{"id": "Add_Two", "idea": "i", "tests": "t"}"#,
            Err(
                "s.jsonl:1: the id `Add_Two` is not kebab-case (lowercase letters and digits joined by -)",
            ),
        );
        check(
            r#"{"id": "x", "idea": "i", "tests": "t", "test": "t"}"#,
            Err("s.jsonl:1: unknown key `test`; keys: id, idea, tests, notes, difficulty"),
        );
        check(
            r#"{"id": "x", "idea": "i", "tests": "t", "notes": 1}"#,
            Err("s.jsonl:1: `notes` must be a string"),
        );
        check("\n\n", Err("s.jsonl: no ideas in the suite"));
    }
}
