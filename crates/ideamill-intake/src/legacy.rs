//! The files of the system ideamill replaces, mapped to items: a plan that
//! `ideamill import legacy` shows (`--dry-run`) or applies. Pure apart from
//! reading the folder: no store, no clock (`now` is an argument).
//!
//! Their exact schemas were never written down, so the mapping is tolerant
//! and explicit: it accepts the plausible shapes, keeps every field it does
//! not map as metadata, and says, record by record, what it could not map
//! and what it guessed.
//!
//! - `ideas_log.json`: an array of ideas (objects or strings), or an object
//!   holding such arrays (whose keys may name a status: `{"done": [...]}`),
//!   or an object of ideas by id. Done ideas are imported done, failed ones
//!   failed with their error, ones waiting for a QA retry resume after the
//!   gate with their feedback, everything else is queued as new work.
//! - `QAissue.json`: pending retries with QA feedback. One that names an idea
//!   of `ideas_log.json` is merged into it; one that carries its own text is
//!   an item of its own. Either resumes at the stage the config's gate sends
//!   rejected work back to (`retry_from`), its feedback kept as the gate's
//!   feedback, where prompts find it (`feedback`).
//! - `implementations/*.json`: tasks (one per file, or arrays of them), with
//!   all of their content kept as metadata.
//!
//! Each record has a stable key (its file and id, or its content's hash when
//! it has no unique id), so importing the same folder twice creates nothing
//! new.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ideamill_core::config::StageConfig;
use ideamill_core::machine::{NextJob, first_job};
use ideamill_core::{Config, Millis};
use ideamill_store::{ImportedItem, ImportedState, IntakeSource, Rejection};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::IntakeError;
use crate::parse::{decode, kind};

/// The ideas file's usual name (`ideas.json` and `ideas_log.jsonl` are taken too).
pub const IDEAS_LOG: &str = "ideas_log.json";
/// The QA retries file's usual name (a few spellings are taken too).
pub const QA_ISSUES: &str = "QAissue.json";
/// The folder of task files.
pub const IMPLEMENTATIONS: &str = "implementations";

/// Fields an idea's text is taken from, in order of preference.
const TEXT_FIELDS: &[&str] = &[
    "text",
    "idea",
    "prompt",
    "task",
    "instructions",
    "description",
    "title",
    "summary",
];
const ID_FIELDS: &[&str] = &["id", "idea_id", "uuid", "key"];
const STATUS_FIELDS: &[&str] = &["status", "state"];
const CREATED_FIELDS: &[&str] = &[
    "created_at",
    "created",
    "timestamp",
    "added_at",
    "date",
    "time",
];
const ERROR_FIELDS: &[&str] = &[
    "error",
    "last_error",
    "error_message",
    "failure",
    "failure_reason",
    "reason",
];
const FEEDBACK_FIELDS: &[&str] = &[
    "feedback",
    "qa_feedback",
    "qa_issue",
    "qa_issues",
    "issues",
    "issue",
    "qa_report",
    "report",
    "errors",
];

/// What the old system's status words mean here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Queued,
    Done,
    Failed,
    Cancelled,
    /// A QA check failed and the work waits for another round.
    Retry,
}

fn status_of(word: &str) -> Option<Status> {
    let w = word.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    Some(match w.as_str() {
        "done" | "completed" | "complete" | "success" | "successful" | "succeeded" | "finished"
        | "implemented" | "passed" | "pass" | "ok" | "resolved" | "closed" | "fixed"
        | "shipped" | "deployed" => Status::Done,
        "failed" | "failure" | "fail" | "error" | "errored" | "crashed" | "abandoned" | "dead"
        | "exhausted" => Status::Failed,
        "cancelled" | "canceled" | "skipped" | "dropped" => Status::Cancelled,
        "qa_failed" | "qa_fail" | "qa_rejected" | "rejected" | "retry" | "retrying"
        | "needs_retry" | "pending_retry" | "needs_fix" | "needs_fixes" | "changes_requested" => {
            Status::Retry
        }
        "" | "queued" | "queue" | "pending" | "new" | "todo" | "waiting" | "open" | "ready"
        | "in_progress" | "processing" | "running" | "started" | "working" | "active"
        | "outlined" | "outlining" | "implementing" | "ideas" | "items" | "tasks" => Status::Queued,
        _ => return None,
    })
}

/// The whole import, as it would be applied.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The legacy folder.
    pub dir: PathBuf,
    /// Each file found, in the order read: ideas, QA issues, tasks.
    pub files: Vec<FileReport>,
    /// Every record of every file, in the same order.
    pub records: Vec<Record>,
}

/// One file of the folder.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Relative to the folder.
    pub file: String,
    /// Records read from it.
    pub records: usize,
    /// Why the file could not be read at all, with its line and column.
    pub problem: Option<String>,
    /// Parts of the file that are not records (and what became of them).
    pub notes: Vec<String>,
}

/// One record of a file, and what it maps to.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// `ideas_log.json #3`, `implementations/a.json`.
    pub source: String,
    /// What it becomes.
    pub mapping: Mapping,
    /// What was guessed or left aside while mapping it.
    pub notes: Vec<String>,
}

/// What a record becomes; serialized for `import legacy --json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mapping {
    /// Becomes an item in this state.
    Item {
        /// As shown to the user: `queued`, `resumes after QA`, `done`, `failed`.
        state: &'static str,
        /// The stage it runs next, if it is not finished.
        stage: Option<String>,
        /// What is imported.
        #[serde(skip)]
        item: Box<ImportedItem>,
    },
    /// Folded into another record's item (a QA issue into its idea).
    Merged {
        /// The other record's `source`.
        into: String,
    },
    /// Deliberately not imported (a QA issue already resolved).
    Skipped {
        /// Why, for the user.
        reason: String,
    },
    /// Could not be mapped.
    Unmapped {
        /// Why, for the user.
        reason: String,
    },
}

impl Plan {
    /// The items to import, in file order.
    pub fn items(&self) -> Vec<ImportedItem> {
        self.records
            .iter()
            .filter_map(|r| match &r.mapping {
                Mapping::Item { item, .. } => Some((**item).clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether anything could not be read or mapped.
    pub fn incomplete(&self) -> bool {
        self.files.iter().any(|f| f.problem.is_some())
            || self
                .records
                .iter()
                .any(|r| matches!(r.mapping, Mapping::Unmapped { .. }))
    }
}

/// Where imported work goes in this config's pipeline.
struct Targets {
    first: NextJob,
    /// The gate whose rejection QA feedback stands for, and the stage it
    /// sends work back to.
    gate: Option<(String, StageConfig)>,
}

impl Targets {
    fn new(config: &Config) -> Targets {
        // The last gate: QA checks the finished work.
        let gate = config.stages.iter().rev().find_map(|s| {
            let g = s.gate.as_ref()?;
            Some((s.name.clone(), config.stage(&g.retry_from)?.clone()))
        });
        Targets {
            first: first_job(config),
            gate,
        }
    }

    /// The state of a record that QA rejected with `feedback` (oldest first).
    fn rejected(&self, feedback: Vec<String>, notes: &mut Vec<String>) -> ImportedState {
        let (gate, resume) = match &self.gate {
            Some((gate, to)) => (
                gate.clone(),
                NextJob {
                    stage: to.name.clone(),
                    round: 1,
                    max_attempts: to.retry.max_attempts,
                },
            ),
            None => {
                notes.push(format!(
                    "the config has no gate: resumes at the first stage `{}`, its QA feedback kept",
                    self.first.stage
                ));
                ("qa".to_string(), self.first.clone())
            }
        };
        let rounds = feedback.len() as u32;
        let rejections = feedback
            .into_iter()
            .enumerate()
            .map(|(i, feedback)| Rejection {
                stage: gate.clone(),
                round: i as u32 + 1,
                feedback,
            })
            .collect();
        ImportedState::Rejected {
            rejections,
            next: NextJob {
                round: rounds + 1,
                ..resume
            },
        }
    }
}

/// Read a legacy folder and plan its import into `config`'s pipeline.
pub fn plan(dir: &Path, config: &Config, now: Millis) -> Result<Plan, IntakeError> {
    let meta = std::fs::metadata(dir)
        .map_err(IntakeError::io(format!("cannot read {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(IntakeError::Io {
            what: format!("{} is not a folder", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    let targets = Targets::new(config);
    let mut plan = Plan {
        dir: dir.to_path_buf(),
        files: Vec::new(),
        records: Vec::new(),
    };
    let ideas = find(dir, &[IDEAS_LOG, "ideas.json", "ideas_log.jsonl"]);
    let qa = find(
        dir,
        &[
            QA_ISSUES,
            "qa_issues.json",
            "qa_issue.json",
            "QAissues.json",
        ],
    );
    let implementations = implementation_files(dir);
    if ideas.is_none() && qa.is_none() && implementations.is_empty() {
        return Err(IntakeError::Io {
            what: format!(
                "no legacy files in {}: looked for {IDEAS_LOG}, {QA_ISSUES} and {IMPLEMENTATIONS}/*.json",
                dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }

    // Ideas first: QA issues are merged into them by id.
    let mut by_id: HashMap<String, usize> = HashMap::new();
    if let Some(path) = ideas {
        let (report, raws) = read_records(dir, &path);
        let keys = keys_for(&report.file, &raws);
        for (raw, key) in raws.into_iter().zip(keys) {
            let record = map_idea(&report.file, raw, key, &targets, now);
            if let (Some(id), Mapping::Item { .. }) = (&record.1, &record.0.mapping) {
                by_id.insert(id.clone(), plan.records.len());
            }
            plan.records.push(record.0);
        }
        plan.files.push(report);
    }
    if let Some(path) = qa {
        let (report, raws) = read_records(dir, &path);
        let keys = keys_for(&report.file, &raws);
        for (raw, key) in raws.into_iter().zip(keys) {
            let record = map_qa_issue(&report.file, raw, key, &targets, now, &by_id, &mut plan);
            plan.records.push(record);
        }
        plan.files.push(report);
    }
    for path in implementations {
        let (report, raws) = read_records(dir, &path);
        let keys = keys_for(&report.file, &raws);
        for (raw, key) in raws.into_iter().zip(keys) {
            let record = map_idea(&report.file, raw, key, &targets, now).0;
            plan.records.push(record);
        }
        plan.files.push(report);
    }
    Ok(plan)
}

/// The first of `names` in `dir`, compared without case.
fn find(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    let entries: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().to_lowercase(), e.path()))
        .collect();
    names.iter().find_map(|want| {
        let want = want.to_lowercase();
        entries
            .iter()
            .find(|(name, _)| *name == want)
            .map(|(_, p)| p.clone())
    })
}

fn implementation_files(dir: &Path) -> Vec<PathBuf> {
    let Some(sub) = find_dir(dir, IMPLEMENTATIONS) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(sub)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn find_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name().to_string_lossy().eq_ignore_ascii_case(name)
        })
        .map(|e| e.path())
}

/// A record as found in its file, before mapping.
struct Raw {
    /// `ideas_log.json #3`, `ideas_log.json done[2]`, `ideas_log.json "17"`.
    source: String,
    value: Value,
    /// A status named by the key of the array holding it.
    status_hint: Option<String>,
    /// An id named by the key of the object holding it.
    id_hint: Option<String>,
    /// Why it could not be read (a broken line of a `.jsonl` file).
    problem: Option<String>,
}

/// Every record of one file, and the file's report.
fn read_records(dir: &Path, path: &Path) -> (FileReport, Vec<Raw>) {
    let file = path
        .strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    let mut report = FileReport {
        file: file.clone(),
        records: 0,
        problem: None,
        notes: Vec::new(),
    };
    let mut raws = Vec::new();
    let value = match read_json(path) {
        Ok(Json::Document(value)) => value,
        Ok(Json::Lines(lines)) => {
            // One record per line; a broken line is one unmapped record.
            for (line, parsed) in lines {
                let (value, problem) = match parsed {
                    Ok(value) => (value, None),
                    Err(problem) => (Value::Null, Some(problem)),
                };
                raws.push(Raw {
                    source: format!("{file} line {line}"),
                    value,
                    status_hint: None,
                    id_hint: None,
                    problem,
                });
            }
            report.records = raws.len();
            return (report, raws);
        }
        Err(problem) => {
            report.problem = Some(problem);
            return (report, raws);
        }
    };
    match value {
        Value::Array(_) => collect(&file, value, None, 0, &mut raws, &mut report.notes),
        Value::Object(map) if text_field(&map).is_some() => raws.push(Raw {
            source: file.clone(),
            value: Value::Object(map),
            status_hint: None,
            id_hint: None,
            problem: None,
        }),
        Value::Object(_) => collect(&file, value, None, 0, &mut raws, &mut report.notes),
        other => {
            report.problem = Some(format!(
                "line 1, column 1: expected an array or an object of records, found {}",
                kind(&other)
            ));
        }
    }
    report.records = raws.len();
    (report, raws)
}

/// The records in a container: an array of records, or an object holding
/// arrays of records (whose keys may name a status), records by id, or
/// (one level down) more of those.
fn collect(
    label: &str,
    value: Value,
    status_hint: Option<&str>,
    depth: u32,
    raws: &mut Vec<Raw>,
    notes: &mut Vec<String>,
) {
    match value {
        Value::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                let source = if depth == 0 {
                    format!("{label} #{}", i + 1)
                } else {
                    format!("{label}[{}]", i + 1)
                };
                raws.push(Raw {
                    source,
                    value: v,
                    status_hint: status_hint.map(str::to_string),
                    id_hint: None,
                    problem: None,
                });
            }
        }
        Value::Object(map) => {
            // Strings are records (`{"17": "an idea"}`) only in a map of
            // records by id, never beside arrays or numbers
            // (`{"version": 3, "updated": "…", "queue": [...]}`).
            let strings_are_records = !map
                .values()
                .any(|v| v.is_array() || v.is_number() || v.is_boolean() || v.is_null())
                && (map.values().all(Value::is_string)
                    || map.values().any(|v| v.is_object() && looks_like_record(v)));
            let mut left = Vec::new();
            for (key, v) in map {
                let inner = format!("{label} {key}");
                let record = match &v {
                    Value::String(_) => strings_are_records,
                    Value::Object(_) => looks_like_record(&v),
                    _ => false,
                };
                match v {
                    Value::Array(_) => collect(&inner, v, Some(&key), depth + 1, raws, notes),
                    v if record => raws.push(Raw {
                        source: format!("{label} \"{key}\""),
                        value: v,
                        status_hint: status_hint.map(str::to_string),
                        id_hint: Some(key),
                        problem: None,
                    }),
                    Value::Object(m)
                        if depth < 2
                            && m.values().any(|c| {
                                c.is_array() || (c.is_object() && looks_like_record(c))
                            }) =>
                    {
                        collect(&inner, Value::Object(m), Some(&key), depth + 1, raws, notes)
                    }
                    _ => left.push(key),
                }
            }
            if !left.is_empty() {
                notes.push(format!(
                    "fields of {label} that are not records were left aside: {}",
                    left.join(", ")
                ));
            }
        }
        _ => {}
    }
}

/// A value that could be a record: an object with any field an idea, an
/// issue or a task has, or a string.
fn looks_like_record(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Object(map) => {
            text_field(map).is_some()
                || [ID_FIELDS, STATUS_FIELDS, FEEDBACK_FIELDS]
                    .iter()
                    .any(|fields| fields.iter().any(|f| map.contains_key(*f)))
        }
        _ => false,
    }
}

/// A legacy file's JSON: one document, or (`.jsonl`) one value per line,
/// each with its line number.
enum Json {
    Document(Value),
    Lines(Vec<(usize, Result<Value, String>)>),
}

fn read_json(path: &Path) -> Result<Json, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let text = decode(&bytes).map_err(|e| e.to_string())?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let parsed = serde_json::from_str(line).map_err(|e| {
                    format!(
                        "line {}, column {}: invalid JSON: {}",
                        i + 1,
                        e.column(),
                        bare(&e)
                    )
                });
                (i + 1, parsed)
            })
            .collect();
        return Ok(Json::Lines(lines));
    }
    serde_json::from_str(text).map(Json::Document).map_err(|e| {
        format!(
            "line {}, column {}: invalid JSON: {}",
            e.line(),
            e.column(),
            bare(&e)
        )
    })
}

fn bare(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// A stable key per record: its id when that is unique in the file, else
/// the hash of its content (identical records are one record).
fn keys_for(file: &str, raws: &[Raw]) -> Vec<String> {
    let ids: Vec<Option<String>> = raws.iter().map(record_id).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids.iter().flatten() {
        *counts.entry(id).or_default() += 1;
    }
    raws.iter()
        .zip(&ids)
        .map(|(raw, id)| match id {
            Some(id) if counts.get(id.as_str()) == Some(&1) => format!("legacy:{file}:id:{id}"),
            _ => format!(
                "legacy:{file}:sha256:{:x}",
                Sha256::digest(raw.value.to_string().as_bytes())
            ),
        })
        .collect()
}

fn record_id(raw: &Raw) -> Option<String> {
    let from_field = match &raw.value {
        Value::Object(map) => ID_FIELDS.iter().find_map(|f| scalar(map.get(*f)?)),
        _ => None,
    };
    from_field.or_else(|| raw.id_hint.clone())
}

/// A string or a number as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text_field(map: &Map<String, Value>) -> Option<&'static str> {
    TEXT_FIELDS.iter().copied().find(|f| {
        map.get(*f)
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()))
    })
}

/// The fields of a record that the mapping reads.
struct Fields {
    text: Option<String>,
    id: Option<String>,
    status: Option<String>,
    created: Option<Value>,
    error: Option<String>,
    feedback: Vec<String>,
    /// Everything else, for the item's metadata.
    rest: Map<String, Value>,
}

fn fields(raw: &Raw) -> Result<Fields, String> {
    if let Some(problem) = &raw.problem {
        return Err(problem.clone());
    }
    let mut map = match &raw.value {
        Value::String(s) if !s.trim().is_empty() => {
            let mut m = Map::new();
            m.insert("text".into(), Value::String(s.clone()));
            m
        }
        Value::Object(map) => map.clone(),
        other => {
            return Err(format!(
                "a record must be an object or a string, found {}",
                kind(other)
            ));
        }
    };
    let text = text_field(&map).and_then(|f| match map.remove(f) {
        Some(Value::String(s)) => Some(s.trim().to_string()),
        _ => None,
    });
    let id = ID_FIELDS
        .iter()
        .find_map(|f| {
            let v = scalar(map.get(*f)?)?;
            map.remove(*f);
            Some(v)
        })
        .or_else(|| raw.id_hint.clone());
    let status = STATUS_FIELDS.iter().find_map(|f| match map.get(*f) {
        Some(Value::String(s)) => {
            let s = s.clone();
            map.remove(*f);
            Some(s)
        }
        _ => None,
    });
    let created = CREATED_FIELDS.iter().find_map(|f| match map.get(*f) {
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            let v = v.clone();
            map.remove(*f);
            Some(v)
        }
        _ => None,
    });
    let error = ERROR_FIELDS.iter().find_map(|f| {
        let s = flatten_text(map.get(*f)?)?;
        map.remove(*f);
        Some(s)
    });
    let mut feedback = Vec::new();
    for f in FEEDBACK_FIELDS {
        if let Some(v) = map.get(*f) {
            let found = feedback_list(v);
            if !found.is_empty() {
                feedback = found;
                map.remove(*f);
                break;
            }
        }
    }
    if let Some(Value::Object(meta)) = map.remove("metadata") {
        for (k, v) in meta {
            map.entry(k).or_insert(v);
        }
    }
    Ok(Fields {
        text,
        id,
        status,
        created,
        error,
        feedback,
        rest: map,
    })
}

/// Text from a string, or from an object's text field, or from a list of
/// those joined by lines.
fn flatten_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Object(map) => text_field(map)
            .or_else(|| {
                ["message", "details", "detail", "output"]
                    .into_iter()
                    .find(|f| map.get(*f).is_some_and(Value::is_string))
            })
            .and_then(|f| flatten_text(map.get(f)?))
            .or_else(|| Some(v.to_string())),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(flatten_text).collect();
            (!parts.is_empty()).then(|| parts.join("\n"))
        }
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// QA feedback as rounds, oldest first: a string is one round; a list of
/// rounds (objects with `round`/`feedback`, or strings) is several.
fn feedback_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) if items.iter().all(|i| i.is_object()) && !items.is_empty() => {
            // Several rounds when they say so, else one report of many issues.
            let rounds = items.iter().any(|i| {
                i.get("round").is_some() || FEEDBACK_FIELDS.iter().any(|f| i.get(*f).is_some())
            });
            if rounds {
                let mut sorted: Vec<&Value> = items.iter().collect();
                sorted.sort_by_key(|i| i.get("round").and_then(Value::as_i64).unwrap_or(0));
                sorted
                    .into_iter()
                    .filter_map(|i| {
                        let map = i.as_object()?;
                        FEEDBACK_FIELDS
                            .iter()
                            .find_map(|f| flatten_text(map.get(*f)?))
                            .or_else(|| flatten_text(i))
                    })
                    .collect()
            } else {
                flatten_text(v).into_iter().collect()
            }
        }
        other => flatten_text(other).into_iter().collect(),
    }
}

/// `created_at` in the forms Python programs write: ISO 8601 (with or
/// without a zone), or seconds or milliseconds since the epoch.
fn parse_time(v: &Value) -> Option<Millis> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64()?;
            if !(0.0..1e15).contains(&f) {
                None
            } else if f > 1e11 {
                Some(f as Millis)
            } else {
                Some((f * 1000.0) as Millis)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(f) = s.parse::<f64>() {
                return parse_time(&serde_json::json!(f));
            }
            let (base, offset_secs) = split_zone(s);
            let base = if base.len() == 10 {
                format!("{base}T00:00:00")
            } else {
                base.to_string()
            };
            let t = humantime::parse_rfc3339_weak(&base).ok()?;
            let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as Millis;
            Some(ms - offset_secs * 1000)
        }
        _ => None,
    }
}

/// An ISO time without its zone, and the zone's offset in seconds.
fn split_zone(s: &str) -> (&str, i64) {
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return (base, 0);
    }
    if s.len() > 16 {
        let (base, zone) = s.split_at(s.len() - 6);
        let b = zone.as_bytes();
        if (b[0] == b'+' || b[0] == b'-')
            && b[3] == b':'
            && let (Ok(h), Ok(m)) = (zone[1..3].parse::<i64>(), zone[4..6].parse::<i64>())
        {
            let sign = if b[0] == b'-' { -1 } else { 1 };
            return (base, sign * (h * 3600 + m * 60));
        }
    }
    (s, 0)
}

/// The legacy facts kept with the item: where it came from and the fields
/// the mapping read, as they were.
fn legacy_meta(file: &str, f: &Fields) -> Value {
    let mut legacy = BTreeMap::new();
    legacy.insert("file", Value::String(file.to_string()));
    if let Some(id) = &f.id {
        legacy.insert("id", Value::String(id.clone()));
    }
    if let Some(status) = &f.status {
        legacy.insert("status", Value::String(status.clone()));
    }
    if let Some(created) = &f.created {
        legacy.insert("created_at", created.clone());
    }
    serde_json::to_value(legacy).unwrap_or(Value::Null)
}

/// Map a record of `ideas_log.json` or `implementations/*.json`. Returns
/// the record and its legacy id.
fn map_idea(
    file: &str,
    raw: Raw,
    key: String,
    targets: &Targets,
    now: Millis,
) -> (Record, Option<String>) {
    let mut notes = Vec::new();
    let f = match fields(&raw) {
        Ok(f) => f,
        Err(reason) => {
            return (
                Record {
                    source: raw.source,
                    mapping: Mapping::Unmapped { reason },
                    notes,
                },
                None,
            );
        }
    };
    let Some(text) = f.text.clone() else {
        let present: Vec<&str> = match &raw.value {
            Value::Object(m) => m.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        return (
            Record {
                source: raw.source,
                mapping: Mapping::Unmapped {
                    reason: format!(
                        "no idea text: none of the fields {} holds text (it has: {})",
                        TEXT_FIELDS.join(", "),
                        if present.is_empty() {
                            "nothing".to_string()
                        } else {
                            present.join(", ")
                        }
                    ),
                },
                notes,
            },
            f.id,
        );
    };
    let word = f.status.clone().or(raw.status_hint.clone());
    let status = match word.as_deref() {
        None => Status::Queued,
        Some(w) => status_of(w).unwrap_or_else(|| {
            // A hint from a key like "ideas" that is no status word is no note.
            if f.status.is_some() {
                notes.push(format!(
                    "status `{w}` is not one ideamill knows: imported as queued"
                ));
            }
            Status::Queued
        }),
    };
    let created_at = match &f.created {
        None => now,
        Some(v) => parse_time(v).unwrap_or_else(|| {
            notes.push(format!(
                "created_at {v} is not a time ideamill reads: the import time is used"
            ));
            now
        }),
    };
    let state = match status {
        Status::Queued => ImportedState::Queued {
            next: targets.first.clone(),
        },
        Status::Done => ImportedState::Done,
        Status::Failed | Status::Cancelled => {
            let error = f.error.clone().unwrap_or_else(|| {
                format!(
                    "{} in the old system (status `{}`)",
                    if status == Status::Failed {
                        "failed"
                    } else {
                        "cancelled"
                    },
                    word.as_deref().unwrap_or("")
                )
            });
            ImportedState::Failed {
                error,
                stage: targets.first.stage.clone(),
            }
        }
        Status::Retry if f.feedback.is_empty() => {
            notes
                .push("waits for a QA retry but has no feedback: queued at the first stage".into());
            ImportedState::Queued {
                next: targets.first.clone(),
            }
        }
        Status::Retry => targets.rejected(f.feedback.clone(), &mut notes),
    };
    let mut metadata = f.rest.clone();
    if !matches!(state, ImportedState::Rejected { .. }) && !f.feedback.is_empty() {
        metadata.insert("qa_feedback".into(), Value::from(f.feedback.clone()));
    }
    if !matches!(state, ImportedState::Failed { .. })
        && let Some(e) = &f.error
    {
        metadata.insert("error".into(), Value::String(e.clone()));
    }
    metadata.insert("legacy".into(), legacy_meta(file, &f));
    let item = ImportedItem {
        source: IntakeSource {
            key,
            name: raw.source.clone(),
        },
        text,
        metadata: Value::Object(metadata),
        created_at,
        state,
    };
    (
        Record {
            source: raw.source,
            mapping: item_mapping(item),
            notes,
        },
        f.id,
    )
}

fn item_mapping(item: ImportedItem) -> Mapping {
    let (state, stage) = match &item.state {
        ImportedState::Queued { next } => ("queued", Some(next.stage.clone())),
        ImportedState::Rejected { next, .. } => ("resumes after QA", Some(next.stage.clone())),
        ImportedState::Done => ("done", None),
        ImportedState::Failed { .. } => ("failed", None),
    };
    Mapping::Item {
        state,
        stage,
        item: Box::new(item),
    }
}

/// Map a record of `QAissue.json`: merged into its idea when it names one of
/// `ideas_log.json`, else an item of its own.
fn map_qa_issue(
    file: &str,
    raw: Raw,
    key: String,
    targets: &Targets,
    now: Millis,
    by_id: &HashMap<String, usize>,
    plan: &mut Plan,
) -> Record {
    let source = raw.source.clone();
    let mut notes = Vec::new();
    let f = match fields(&raw) {
        Ok(f) => f,
        Err(reason) => {
            return Record {
                source,
                mapping: Mapping::Unmapped { reason },
                notes,
            };
        }
    };
    if let Some(word) = f.status.as_deref()
        && matches!(status_of(word), Some(Status::Done | Status::Cancelled))
    {
        return Record {
            source,
            mapping: Mapping::Skipped {
                reason: format!("status `{word}`: nothing to resume"),
            },
            notes,
        };
    }

    // A string record is the feedback itself, for the idea its key names.
    let (text, feedback) = match (&raw.value, f.feedback.is_empty()) {
        (Value::String(s), _) if raw.id_hint.is_some() => (None, vec![s.trim().to_string()]),
        _ => (f.text.clone(), f.feedback.clone()),
    };
    let feedback = if feedback.is_empty() {
        match f.error.clone() {
            Some(e) => {
                notes.push("no feedback field: its error is used as the feedback".into());
                vec![e]
            }
            None => {
                return Record {
                    source,
                    mapping: Mapping::Unmapped {
                        reason: format!(
                            "no QA feedback: none of the fields {} holds any",
                            FEEDBACK_FIELDS.join(", ")
                        ),
                    },
                    notes,
                };
            }
        }
    } else {
        feedback
    };

    // The idea it is about: `idea_id` when an issue has its own `id` too.
    let link = match &raw.value {
        Value::Object(map) => map.get("idea_id").and_then(scalar),
        _ => None,
    }
    .or(f.id.clone());
    if let Some(&index) = link.as_ref().and_then(|id| by_id.get(id)) {
        let target = &mut plan.records[index];
        let into = target.source.clone();
        if let Mapping::Item { item, .. } = &mut target.mapping {
            match &item.state {
                ImportedState::Done => {
                    return Record {
                        source,
                        mapping: Mapping::Skipped {
                            reason: format!("its idea ({into}) is done: nothing to resume"),
                        },
                        notes,
                    };
                }
                ImportedState::Rejected { rejections, .. } => {
                    // Both files hold feedback: ideas_log's first, then this.
                    let mut all: Vec<String> =
                        rejections.iter().map(|r| r.feedback.clone()).collect();
                    all.extend(feedback);
                    item.state = targets.rejected(all, &mut target.notes);
                }
                _ => {
                    item.state = targets.rejected(feedback, &mut target.notes);
                }
            }
            if let Value::Object(meta) = &mut item.metadata {
                let mut qa = f.rest.clone();
                qa.insert("file".into(), Value::String(file.to_string()));
                meta.insert("legacy_qa".into(), Value::Object(qa));
            }
            let updated = item_mapping((**item).clone());
            target.mapping = updated;
            target
                .notes
                .push(format!("resumes after QA with the feedback of {source}"));
        }
        return Record {
            source,
            mapping: Mapping::Merged { into },
            notes,
        };
    }

    let Some(text) = text else {
        return Record {
            source,
            mapping: Mapping::Unmapped {
                reason: match &link {
                    Some(id) => format!(
                        "no idea text, and no idea with id {id} in {IDEAS_LOG} to attach its feedback to"
                    ),
                    None => format!(
                        "no idea text and no idea id: none of the fields {} or {} is set",
                        TEXT_FIELDS.join(", "),
                        ID_FIELDS.join(", ")
                    ),
                },
            },
            notes,
        };
    };
    let created_at = match &f.created {
        None => now,
        Some(v) => parse_time(v).unwrap_or_else(|| {
            notes.push(format!(
                "created_at {v} is not a time ideamill reads: the import time is used"
            ));
            now
        }),
    };
    let state = targets.rejected(feedback, &mut notes);
    let mut metadata = f.rest.clone();
    if let Some(e) = &f.error {
        metadata.insert("error".into(), Value::String(e.clone()));
    }
    metadata.insert("legacy".into(), legacy_meta(file, &f));
    Record {
        source: source.clone(),
        mapping: item_mapping(ImportedItem {
            source: IntakeSource { key, name: source },
            text,
            metadata: Value::Object(metadata),
            created_at,
            state,
        }),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let check = |w: &str, s: Option<Status>| assert_eq!(status_of(w), s, "{w}");
        check("Done", Some(Status::Done));
        check("completed", Some(Status::Done));
        check("qa-failed", Some(Status::Retry));
        check("needs retry", Some(Status::Retry));
        check("FAILED", Some(Status::Failed));
        check("in_progress", Some(Status::Queued));
        check("canceled", Some(Status::Cancelled));
        check("", Some(Status::Queued));
        check("weird", None);
    }

    #[test]
    fn times() {
        let check = |v: Value, ms: Option<Millis>| assert_eq!(parse_time(&v), ms, "{v}");
        check(serde_json::json!(1_705_227_000), Some(1_705_227_000_000));
        check(serde_json::json!(1_705_227_000.5), Some(1_705_227_000_500));
        check(
            serde_json::json!(1_705_227_000_123i64),
            Some(1_705_227_000_123),
        );
        check(serde_json::json!("1705227000"), Some(1_705_227_000_000));
        check(
            serde_json::json!("2024-01-14T10:10:00Z"),
            Some(1_705_227_000_000),
        );
        check(
            serde_json::json!("2024-01-14T10:10:00"),
            Some(1_705_227_000_000),
        );
        check(
            serde_json::json!("2024-01-14 10:10:00.250"),
            Some(1_705_227_000_250),
        );
        check(
            serde_json::json!("2024-01-14T11:10:00+01:00"),
            Some(1_705_227_000_000),
        );
        check(serde_json::json!("2024-01-14"), Some(1_705_190_400_000));
        check(serde_json::json!("yesterday"), None);
        check(serde_json::json!(true), None);
    }

    #[test]
    fn feedback_rounds() {
        let check = |v: Value, want: &[&str]| assert_eq!(feedback_list(&v), want, "{v}");
        check(serde_json::json!("fix it"), &["fix it"]);
        check(
            serde_json::json!([{"round": 2, "feedback": "b"}, {"round": 1, "feedback": "a"}]),
            &["a", "b"],
        );
        check(
            serde_json::json!([{"message": "x"}, {"message": "y"}]),
            &["x\ny"],
        );
        check(serde_json::json!(["a", "b"]), &["a\nb"]);
        check(serde_json::json!(null), &[]);
    }
}
