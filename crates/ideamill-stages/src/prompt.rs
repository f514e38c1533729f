//! Prompt templates (minijinja) for `llm` stages: what they may use, how
//! they are checked before a run, and how they are rendered for an attempt.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};

/// The variables a prompt can use. `ideamill validate` refuses any other.
pub const VARIABLES: &[(&str, &str)] = &[
    ("idea", "the idea's text"),
    ("item", "the item: id, text, metadata"),
    ("metadata", "the idea's metadata (an object)"),
    ("stage", "this stage's name"),
    ("attempt", "this try's number, from 1"),
    ("max_attempts", "the stage's max_attempts"),
    ("round", "the QA round, from 1"),
    ("outputs", "earlier stages' latest outputs, by stage name"),
    ("feedback", "the latest QA feedback, or none"),
    (
        "feedback_history",
        "every round's feedback: a list of {stage, round, feedback}",
    ),
    (
        "files",
        "the files in the item's workspace: a list of relative paths",
    ),
];

/// Names minijinja provides itself.
const BUILTINS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "self",
    "super",
    "varargs",
    "kwargs",
];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Printing a missing value is an error at render time, not an empty
    // string quietly sent to a model; `{% if outputs.qa %}` stays allowed.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_keep_trailing_newline(true);
    env
}

/// Check that `source` parses and uses only known variables. Errors are
/// clear sentences naming the template and, for syntax errors, the line.
pub fn check(name: &str, source: &str) -> Result<(), String> {
    let mut env = environment();
    env.add_template_owned(name.to_owned(), source.to_owned())
        .map_err(|e| describe(&e))?;
    let template = env.get_template(name).map_err(|e| describe(&e))?;
    let known: BTreeSet<&str> = VARIABLES
        .iter()
        .map(|(v, _)| *v)
        .chain(BUILTINS.iter().copied())
        .collect();
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !known.contains(v.as_str()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    let names: Vec<&str> = VARIABLES.iter().map(|(v, _)| *v).collect();
    Err(format!(
        "{name}: unknown variable{} {}; a prompt can use: {}",
        if unknown.len() == 1 { "" } else { "s" },
        unknown
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        names.join(", ")
    ))
}

/// Render `source` with `context` (an object holding [`VARIABLES`]).
pub fn render(name: &str, source: &str, context: &serde_json::Value) -> Result<String, String> {
    let env = environment();
    env.render_named_str(name, source, context)
        .map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    match (e.name(), e.line()) {
        (Some(name), Some(line)) => format!(
            "{name}:{line}: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ok(source: &str) {
        assert_eq!(check("t.md", source), Ok(()), "{source}");
    }

    fn check_err(source: &str, needle: &str) {
        let err = check("t.md", source).unwrap_err();
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    }

    #[test]
    fn templates_may_use_only_known_variables() {
        check_ok("Idea: {{ idea }}\n{% if feedback %}Fix: {{ feedback }}{% endif %}");
        check_ok(
            "{% for f in files %}{{ f }} {% endfor %}{{ outputs.outline }}{{ item.id }} {{ round }}",
        );
        check_ok(
            "{% for r in feedback_history %}{{ loop.index }}: {{ r.feedback }}{% endfor %}{{ metadata|tojson }}",
        );
        check_err("{{ idae }}", "unknown variable `idae`");
        check_err("{{ a }}{{ b }}", "unknown variables `a`, `b`");
        check_err("{% if %}", "t.md:1");
        check_err("{{ idea ", "t.md:1");
    }

    #[test]
    fn rendering_fills_variables_and_refuses_missing_ones() {
        let ctx = serde_json::json!({"idea": "a CSV tool", "outputs": {"outline": "1. parse"}, "feedback": null});
        let text = render(
            "t",
            "{{ idea }} / {{ outputs.outline }}{% if feedback %}!{% endif %}",
            &ctx,
        )
        .unwrap();
        assert_eq!(text, "a CSV tool / 1. parse");
        let err = render("t", "{{ outputs.implement }}", &ctx).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }
}
