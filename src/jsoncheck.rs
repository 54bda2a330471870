//! JSON body conditions such as `$.status == "UP"`, `len($.items) > 0` and `has($.error) == false`.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Number, Value};
use serde_json_path::{JsonPath, NormalizedPath, PathElement};

/// The accepted forms, quoted at the end of parse errors.
const FORMS: &str = concat!(
    "expected `PATH OP VALUE`, `len(PATH) OP NUMBER` or `has(PATH) == true|false`, ",
    "e.g. `$.status == \"UP\"`"
);

/// Longest rendering of a JSON value in a message, in characters.
const MAX_SHOWN: usize = 80;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }

    /// Whether `found OP expected` holds, given how `found` compares with `expected`.
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

/// What the left-hand side measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// `PATH`: the values of the selected nodes.
    Value,
    /// `len(PATH)`: the length of the one selected node.
    Len,
    /// `has(PATH)`: whether the path selects anything.
    Has,
}

/// One condition on a JSON body, parsed once at config load.
///
/// Forms (whitespace between parts is optional):
/// - `PATH OP VALUE`, e.g. `$.status == "UP"`, `$.checks[*].ok == true`, `$.latency_ms < 500`;
/// - `len(PATH) OP NUMBER`, e.g. `len($.items) > 0`;
/// - `has(PATH) == true|false` (or `!=`), e.g. `has($.error) == false`.
///
/// `PATH` is an RFC 9535 JSONPath starting with `$`; `OP` is one of `==`, `!=`, `<`, `<=`,
/// `>`, `>=`; `VALUE` is a JSON string, number, `true`, `false` or `null`, or a bare word such
/// as `UP`, taken as the string `"UP"`.
#[derive(Debug, Clone)]
pub struct JsonCondition {
    /// The source text, trimmed.
    text: String,
    subject: Subject,
    /// The path as written, for messages.
    path_text: String,
    path: JsonPath,
    op: Op,
    /// The right-hand side: a string, number, boolean or null.
    expected: Value,
}

impl PartialEq for JsonCondition {
    /// Two conditions are equal when their source texts are.
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for JsonCondition {}

impl JsonCondition {
    /// Parses a condition such as `$.status == "UP"`, `len($.items) > 0` or
    /// `has($.error) == false`.
    ///
    /// The error is a lower-case sentence that says what is wrong and shows the expected form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("empty condition; {FORMS}"));
        }
        let (start, end, op) = find_operator(text)?;
        let lhs = text[..start].trim();
        let rhs = text[end..].trim();
        if lhs.is_empty() {
            return Err(format!("missing path before `{}`; {FORMS}", op.as_str()));
        }
        let (subject, path_text) = parse_subject(lhs)?;
        let path = JsonPath::parse(path_text).map_err(|e| {
            format!(
                "invalid JSONPath `{path_text}`: {e}; paths follow RFC 9535, \
                 e.g. `$.status`, `$.items[0].name`, `$.checks[*].ok`"
            )
        })?;
        let expected = parse_literal(rhs, op)?;
        match subject {
            Subject::Value => {
                if op.is_ordering() && !expected.is_number() {
                    return Err(format!(
                        "`{}` compares numbers, but `{rhs}` is {}; use `==` or `!=` for \
                         strings, booleans and null, e.g. `$.latency_ms {} 500`",
                        op.as_str(),
                        kind(&expected),
                        op.as_str()
                    ));
                }
            }
            Subject::Len => {
                if !expected.is_number() {
                    return Err(format!(
                        "`len()` compares with a number, but `{rhs}` is {}; \
                         expected `len(PATH) OP NUMBER`, e.g. `len($.items) > 0`",
                        kind(&expected)
                    ));
                }
            }
            Subject::Has => {
                if !matches!(op, Op::Eq | Op::Ne) || !expected.is_boolean() {
                    return Err(format!(
                        "`has()` is compared with `== true`, `== false` or `!=`, not `{} {rhs}`; \
                         expected `has(PATH) == true|false`, e.g. `has($.error) == false`",
                        op.as_str()
                    ));
                }
            }
        }
        Ok(JsonCondition {
            text: text.to_string(),
            subject,
            path_text: path_text.to_string(),
            path,
            op,
            expected,
        })
    }

    /// The source text of the condition, trimmed of surrounding whitespace.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Checks the condition against a JSON body.
    ///
    /// A path that selects several nodes holds only if it selects at least one node and every
    /// node satisfies the comparison. The error says why the condition failed, naming the node
    /// and the value found there, e.g. `$.checks[1].ok is false, expected == true`.
    pub fn check(&self, body: &Value) -> Result<(), String> {
        let nodes = self.path.query_located(body);
        let op = self.op.as_str();
        let expected = show(&self.expected);
        match self.subject {
            Subject::Has => {
                let want_true = self.expected == Value::Bool(true);
                let want_found = (self.op == Op::Eq) == want_true;
                match nodes.iter().next() {
                    None if want_found => Err(format!(
                        "has({}) is false ({} matched nothing), expected {op} {expected}",
                        self.path_text, self.path_text
                    )),
                    Some(node) if !want_found => Err(format!(
                        "has({}) is true ({} is {}), expected {op} {expected}",
                        self.path_text,
                        location(node.location()),
                        show(node.node())
                    )),
                    _ => Ok(()),
                }
            }
            Subject::Len => {
                if nodes.len() > 1 {
                    return Err(format!(
                        "len() needs exactly one node, but {} matched {}",
                        self.path_text,
                        nodes.len()
                    ));
                }
                let Some(node) = nodes.iter().next() else {
                    return Err(format!("{} matched nothing", self.path_text));
                };
                let loc = location(node.location());
                let len = match node.node() {
                    Value::String(s) => s.chars().count(),
                    Value::Array(a) => a.len(),
                    Value::Object(o) => o.len(),
                    other => {
                        return Err(format!(
                            "{loc} is {}, but len() needs a string, array or object",
                            show_with_kind(other)
                        ))
                    }
                };
                let holds = match &self.expected {
                    Value::Number(n) => {
                        compare_numbers(&Number::from(len), n).is_some_and(|ord| self.op.holds(ord))
                    }
                    _ => false,
                };
                if holds {
                    Ok(())
                } else {
                    Err(format!("len({loc}) is {len}, expected {op} {expected}"))
                }
            }
            Subject::Value => {
                if nodes.is_empty() {
                    return Err(format!("{} matched nothing", self.path_text));
                }
                let mut first = None;
                let mut failed = 0;
                for node in nodes.iter() {
                    if let Err(e) = self.check_node(node.location(), node.node()) {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                }
                match first {
                    None => Ok(()),
                    Some(e) if nodes.len() > 1 => {
                        Err(format!("{e} ({failed} of {} matches fail)", nodes.len()))
                    }
                    Some(e) => Err(e),
                }
            }
        }
    }

    /// Checks one selected node against `OP VALUE`.
    fn check_node(&self, loc: &NormalizedPath<'_>, found: &Value) -> Result<(), String> {
        let op = self.op.as_str();
        let expected = show(&self.expected);
        let holds = if self.op.is_ordering() {
            let (Value::Number(a), Value::Number(b)) = (found, &self.expected) else {
                return Err(format!(
                    "{} is {}, expected a number {op} {expected}",
                    location(loc),
                    show_with_kind(found)
                ));
            };
            compare_numbers(a, b).is_some_and(|ord| self.op.holds(ord))
        } else {
            let equal = match (found, &self.expected) {
                (Value::Number(a), Value::Number(b)) => {
                    compare_numbers(a, b) == Some(Ordering::Equal)
                }
                (a, b) => a == b,
            };
            equal == (self.op == Op::Eq)
        };
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{} is {}, expected {op} {expected}",
                location(loc),
                show(found)
            ))
        }
    }
}

/// Finds the last comparison operator outside brackets, parentheses and quotes, returning
/// its byte range and kind.
fn find_operator(text: &str) -> Result<(usize, usize, Op), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut last = None;
    let mut lone_eq = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' => quote = Some(c),
            b'[' | b'(' => depth += 1,
            b']' | b')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => {
                let two = match (c, bytes.get(i + 1)) {
                    (b'=', Some(b'=')) => Some(Op::Eq),
                    (b'!', Some(b'=')) => Some(Op::Ne),
                    (b'<', Some(b'=')) => Some(Op::Le),
                    (b'>', Some(b'=')) => Some(Op::Ge),
                    _ => None,
                };
                if let Some(op) = two {
                    last = Some((i, i + 2, op));
                    i += 2;
                    continue;
                }
                match c {
                    b'<' => last = Some((i, i + 1, Op::Lt)),
                    b'>' => last = Some((i, i + 1, Op::Gt)),
                    b'=' => lone_eq = true,
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    match last {
        Some((start, end, op)) => {
            // Reject runs such as `===` or `=<` rather than splitting them oddly.
            let is_op_byte = |b: &u8| matches!(b, b'=' | b'!' | b'<' | b'>');
            let run_start = start
                - bytes[..start]
                    .iter()
                    .rev()
                    .take_while(|b| is_op_byte(b))
                    .count();
            let run_end = end + bytes[end..].iter().take_while(|b| is_op_byte(b)).count();
            if (run_start, run_end) == (start, end) {
                Ok((start, end, op))
            } else {
                Err(format!(
                    "unknown operator `{}` in `{text}`; use one of ==, !=, <, <=, >, >=",
                    &text[run_start..run_end]
                ))
            }
        }
        None if quote.is_some() || depth > 0 => Err(format!(
            "unclosed bracket, parenthesis or quote in `{text}`; {FORMS}"
        )),
        None if lone_eq => Err(format!(
            "`=` is not an operator in `{text}`, use `==`; {FORMS}"
        )),
        None => Err(format!(
            "no comparison operator (==, !=, <, <=, >, >=) in `{text}`; {FORMS}"
        )),
    }
}

/// Splits the left-hand side into what it measures and the path text.
fn parse_subject(lhs: &str) -> Result<(Subject, &str), String> {
    if lhs.starts_with('$') {
        return Ok((Subject::Value, lhs));
    }
    let name_end = lhs
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(lhs.len());
    let (name, rest) = lhs.split_at(name_end);
    let rest = rest.trim_start();
    if !name.is_empty() && rest.starts_with('(') {
        let subject = match name {
            "len" => Subject::Len,
            "has" => Subject::Has,
            _ => {
                return Err(format!(
                    "unknown function `{name}()`; only `len(PATH)` and `has(PATH)` exist; {FORMS}"
                ))
            }
        };
        let Some(inner) = rest[1..].strip_suffix(')') else {
            return Err(format!(
                "`{lhs}` should end with `)`; expected `{name}(PATH)`, e.g. `{name}($.items)`"
            ));
        };
        let inner = inner.trim();
        if inner.is_empty() {
            return Err(format!("`{name}()` needs a path, e.g. `{name}($.items)`"));
        }
        check_path_start(inner)?;
        return Ok((subject, inner));
    }
    check_path_start(lhs)?;
    Ok((Subject::Value, lhs))
}

/// Rejects a path that does not start with `$`, with a hint.
fn check_path_start(path: &str) -> Result<(), String> {
    if path.starts_with('$') {
        Ok(())
    } else if let Some(rest) = path.strip_prefix("[BODY]") {
        Err(format!(
            "gatus-style `[BODY]` is not supported: write `${rest}` instead of `{path}`"
        ))
    } else {
        Err(format!(
            "the path `{path}` should start with `$`, e.g. `$.status`; {FORMS}"
        ))
    }
}

/// Parses the right-hand side: a JSON scalar, or a bare word taken as a string.
fn parse_literal(rhs: &str, op: Op) -> Result<Value, String> {
    if rhs.is_empty() {
        return Err(format!("missing value after `{}`; {FORMS}", op.as_str()));
    }
    match serde_json::from_str::<Value>(rhs) {
        Ok(v @ (Value::Array(_) | Value::Object(_))) => Err(format!(
            "`{rhs}` is {}; the value should be a string, number, true, false or null",
            kind(&v)
        )),
        Ok(v) => Ok(v),
        Err(_) if is_bare_word(rhs) => {
            let lower = rhs.to_ascii_lowercase();
            if matches!(lower.as_str(), "true" | "false" | "null") {
                Err(format!(
                    "`{rhs}` is ambiguous: write `{lower}` for the JSON value or `\"{rhs}\"` \
                     for the string"
                ))
            } else {
                Ok(Value::String(rhs.to_string()))
            }
        }
        Err(e) if rhs.starts_with('"') => {
            let why = if e.is_eof() {
                "missing closing `\"`".to_string()
            } else {
                e.to_string()
            };
            Err(format!(
                "bad string `{rhs}`: {why}; strings are JSON strings, e.g. `\"UP\"`"
            ))
        }
        Err(_) if rhs.starts_with('\'') => Err(format!(
            "bad value `{rhs}`: strings take double quotes, e.g. `\"UP\"`"
        )),
        Err(_) => Err(format!(
            "bad value `{rhs}`: expected a double-quoted string, a number, true, false, null \
             or a bare word, e.g. `\"UP\"`, `200`, `true`, `UP`"
        )),
    }
}

/// A bare word: a letter or `_`, then letters, digits, `_`, `-` or `.`.
fn is_bare_word(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Compares two JSON numbers, exactly for integers and as `f64` otherwise.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Renders a node's location as `$.checks[1].ok`, quoting names that are not identifiers.
fn location(loc: &NormalizedPath<'_>) -> String {
    let mut out = String::from("$");
    for element in loc.iter() {
        match element {
            PathElement::Name(name) if is_identifier(name) => {
                out.push('.');
                out.push_str(name);
            }
            PathElement::Name(name) => {
                out.push_str("['");
                for c in name.chars() {
                    match c {
                        '\'' => out.push_str("\\'"),
                        '\\' => out.push_str("\\\\"),
                        c if c.is_control() => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push_str("']");
            }
            PathElement::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

/// Whether a member name can be written as `.name`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The JSON type of a value, with an article.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Compact JSON text of a value, cut to about [`MAX_SHOWN`] characters.
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_SHOWN {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SHOWN - 3).collect();
    cut.push_str("...");
    cut
}

/// A value and its type, e.g. `"12ms" (a string)`; `null` alone.
fn show_with_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        _ => format!("{} ({})", show(value), kind(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(text: &str) -> JsonCondition {
        JsonCondition::parse(text).unwrap_or_else(|e| panic!("parse `{text}`: {e}"))
    }

    fn ok(text: &str, body: &Value) {
        if let Err(e) = cond(text).check(body) {
            panic!("`{text}` should hold on {body}, got: {e}");
        }
    }

    fn fails(text: &str, body: &Value) -> String {
        match cond(text).check(body) {
            Ok(()) => panic!("`{text}` should fail on {body}"),
            Err(e) => e,
        }
    }

    fn parse_err(text: &str) -> String {
        match JsonCondition::parse(text) {
            Ok(c) => panic!("`{text}` should not parse, got {c:?}"),
            Err(e) => {
                assert!(
                    e.starts_with(|c: char| !c.is_uppercase()),
                    "error should start lower-case: {e}"
                );
                e
            }
        }
    }

    #[test]
    fn each_operator_on_numbers() {
        let body = json!({"n": 5});
        for text in [
            "$.n == 5",
            "$.n != 4",
            "$.n < 6",
            "$.n <= 5",
            "$.n <= 6",
            "$.n > 4",
            "$.n >= 5",
            "$.n >= 4.5",
        ] {
            ok(text, &body);
        }
        for text in [
            "$.n == 4", "$.n != 5", "$.n < 5", "$.n <= 4", "$.n > 5", "$.n >= 6",
        ] {
            let e = fails(text, &body);
            assert!(e.starts_with("$.n is 5, expected "), "{e}");
        }
    }

    #[test]
    fn numbers_compare_numerically() {
        ok("$.n == 1.0", &json!({"n": 1}));
        ok("$.n == 1", &json!({"n": 1.0}));
        ok("$.n != 1.5", &json!({"n": 1}));
        ok("$.n > -1", &json!({"n": 0}));
        ok("$.n < 1e3", &json!({"n": 999.5}));
        ok("$.n == 18446744073709551615", &json!({"n": u64::MAX}));
        fails(
            "$.n == 9007199254740993",
            &json!({"n": 9007199254740992_u64}),
        );
    }

    #[test]
    fn strings_bools_null() {
        let body = json!({"s": "UP", "t": true, "f": false, "z": null});
        ok("$.s == \"UP\"", &body);
        ok("$.s != \"DOWN\"", &body);
        ok("$.t == true", &body);
        ok("$.f == false", &body);
        ok("$.f != true", &body);
        ok("$.z == null", &body);
        ok("$.s != null", &body);
        assert_eq!(
            fails("$.s == \"DOWN\"", &body),
            "$.s is \"UP\", expected == \"DOWN\""
        );
        assert_eq!(
            fails("$.t == false", &body),
            "$.t is true, expected == false"
        );
        assert_eq!(fails("$.z != null", &body), "$.z is null, expected != null");
        // A string is not a number, nor the other way round.
        fails("$.n == 5", &json!({"n": "5"}));
        fails("$.n == \"5\"", &json!({"n": 5}));
    }

    #[test]
    fn string_escapes_and_operators_inside_strings() {
        ok(r#"$.msg == "a < b == c""#, &json!({"msg": "a < b == c"}));
        ok(r#"$.msg == "say \"hi\"""#, &json!({"msg": "say \"hi\""}));
        ok(r#"$['we ird'] == "x""#, &json!({"we ird": "x"}));
        ok(r#"$["a==b"] == 1"#, &json!({"a==b": 1}));
    }

    #[test]
    fn bare_words_are_strings() {
        let body = json!({"status": "UP", "state": "in-progress"});
        ok("$.status == UP", &body);
        ok("$.status==UP", &body);
        ok("  $.status   ==   UP  ", &body);
        ok("$.state == in-progress", &body);
        ok("$.status != DOWN", &body);
        assert_eq!(
            fails("$.status == DOWN", &body),
            "$.status is \"UP\", expected == \"DOWN\""
        );
    }

    #[test]
    fn wildcard_requires_every_node() {
        let good = json!({"checks": [{"ok": true}, {"ok": true}]});
        ok("$.checks[*].ok == true", &good);
        let bad = json!({"checks": [{"ok": true}, {"ok": false}, {"ok": true}]});
        let e = fails("$.checks[*].ok == true", &bad);
        assert_eq!(
            e,
            "$.checks[1].ok is false, expected == true (1 of 3 matches fail)"
        );
        let e = fails(
            "$.checks[*].ok == true",
            &json!({"checks": [{"ok": 1}, {"ok": "no"}]}),
        );
        assert!(e.starts_with("$.checks[0].ok is 1,"), "{e}");
        assert!(e.ends_with("(2 of 2 matches fail)"), "{e}");
        ok("$.v[*] >= 1", &json!({"v": [1, 2, 3]}));
        let e = fails("$.v[*] < 3", &json!({"v": [1, 2, 3]}));
        assert_eq!(e, "$.v[2] is 3, expected < 3 (1 of 3 matches fail)");
    }

    #[test]
    fn nothing_matched_fails() {
        let body = json!({"checks": [], "a": 1});
        assert_eq!(fails("$.missing == 1", &body), "$.missing matched nothing");
        assert_eq!(
            fails("$.checks[*].ok == true", &body),
            "$.checks[*].ok matched nothing"
        );
        assert_eq!(fails("$.a.b != 2", &body), "$.a.b matched nothing");
        assert_eq!(fails("len($.nope) > 0", &body), "$.nope matched nothing");
    }

    #[test]
    fn ordering_names_non_numbers() {
        let body = json!({"s": "12ms", "b": true, "z": null, "o": {"k": 1}, "a": [1]});
        assert_eq!(
            fails("$.s < 100", &body),
            "$.s is \"12ms\" (a string), expected a number < 100"
        );
        assert_eq!(
            fails("$.b >= 1", &body),
            "$.b is true (a boolean), expected a number >= 1"
        );
        assert_eq!(
            fails("$.z > 0", &body),
            "$.z is null, expected a number > 0"
        );
        assert!(fails("$.o <= 1", &body).contains("(an object)"));
        assert!(fails("$.a <= 1", &body).contains("(an array)"));
    }

    #[test]
    fn len_of_array_string_object() {
        let body = json!({"items": [1, 2, 3], "name": "héllo", "obj": {"a": 1, "b": 2}, "e": []});
        ok("len($.items) == 3", &body);
        ok("len($.items) > 0", &body);
        ok("len( $.items )>=3", &body);
        ok("len($.name) == 5", &body);
        ok("len($.obj) == 2", &body);
        ok("len($.e) == 0", &body);
        ok("len($) == 4", &body);
        assert_eq!(fails("len($.e) > 0", &body), "len($.e) is 0, expected > 0");
        assert_eq!(
            fails("len($.items) < 3", &body),
            "len($.items) is 3, expected < 3"
        );
        assert_eq!(
            fails("len($.items[0]) > 0", &body),
            "$.items[0] is 1 (a number), but len() needs a string, array or object"
        );
        assert_eq!(
            fails("len($.items[*]) > 0", &body),
            "len() needs exactly one node, but $.items[*] matched 3"
        );
    }

    #[test]
    fn has_true_and_false() {
        let body = json!({"data": {"id": 7}, "list": []});
        ok("has($.data) == true", &body);
        ok("has($.data.id) == true", &body);
        ok("has($.error) == false", &body);
        ok("has($.error) != true", &body);
        ok("has($.data) != false", &body);
        ok("has($.list[*]) == false", &body);
        assert_eq!(
            fails("has($.error) == true", &body),
            "has($.error) is false ($.error matched nothing), expected == true"
        );
        assert_eq!(
            fails("has($.data.id) == false", &body),
            "has($.data.id) is true ($.data.id is 7), expected == false"
        );
    }

    #[test]
    fn filters_with_operators_inside_the_path() {
        let body = json!({"items": [
            {"name": "x", "price": 5},
            {"name": "y", "price": 20},
            {"name": "x", "price": 8}
        ]});
        ok(r#"$.items[?@.price < 10].name == "x""#, &body);
        ok("$.items[?@.price<10].name==x", &body);
        ok(
            r#"$.items[?@.price >= 10 && @.name == "y"].price == 20"#,
            &body,
        );
        ok(
            r#"len($.groups[?@.name == "a"].members) == 2"#,
            &json!({"groups": [{"name": "a", "members": [1, 2]}, {"name": "b", "members": []}]}),
        );
        ok("has($.items[?@.price > 100]) == false", &body);
        ok("has($.items[?(@.price <= 5)]) == true", &body);
        let e = fails(r#"$.items[?@.price > 1].name == "x""#, &body);
        assert_eq!(
            e,
            "$.items[1].name is \"y\", expected == \"x\" (1 of 3 matches fail)"
        );
        assert_eq!(
            fails("$.items[?@.price > 100].name == x", &body),
            "$.items[?@.price > 100].name matched nothing"
        );
    }

    #[test]
    fn locations_quote_odd_names() {
        let body = json!({"a b": {"it's": 1}});
        assert_eq!(
            fails("$['a b']['it\\'s'] == 2", &body),
            "$['a b']['it\\'s'] is 1, expected == 2"
        );
    }

    #[test]
    fn long_values_are_truncated() {
        let long = "x".repeat(200);
        let e = fails("$.s == \"short\"", &json!({ "s": long }));
        assert!(e.contains("..."), "{e}");
        assert!(e.len() < 150, "{e}");
    }

    #[test]
    fn source_text_and_equality() {
        let c = cond("  $.status == UP ");
        assert_eq!(c.as_str(), "$.status == UP");
        assert_eq!(c, cond("$.status == UP"));
        assert_ne!(c, cond("$.status == \"UP\""));
        assert_eq!(c.clone(), c);
    }

    #[test]
    fn parse_error_no_operator() {
        let e = parse_err("$.status");
        assert!(e.contains("no comparison operator"), "{e}");
        assert!(e.contains("expected `PATH OP VALUE`"), "{e}");
        assert!(parse_err("").contains("empty condition"));
        assert!(parse_err("$.a = 1").contains("use `==`"));
        assert!(parse_err("$.a === 1").starts_with("unknown operator `===`"));
        assert!(parse_err("$.a =< 1").starts_with("unknown operator `=<`"));
        assert!(parse_err("$.a <> 1").starts_with("unknown operator `<>`"));
        assert!(parse_err("== 1").contains("missing path"));
        assert!(parse_err("$.a ==").contains("missing value after `==`"));
        // An operator inside a filter is not the condition's operator.
        assert!(parse_err("$.items[?@.price < 10]").contains("no comparison operator"));
    }

    #[test]
    fn parse_error_bad_path() {
        let e = parse_err("$.items[ == 1");
        assert!(e.starts_with("unclosed bracket"), "{e}");
        let e = parse_err("$.items[?@.a == 1 == 2");
        assert!(e.starts_with("unclosed bracket"), "{e}");
        let e = parse_err("$..[ ] == 1");
        assert!(e.starts_with("invalid JSONPath `$..[ ]`"), "{e}");
        assert!(e.contains("e.g. `$.status`"), "{e}");
        let e = parse_err("$.a.-b == 1");
        assert!(e.starts_with("invalid JSONPath"), "{e}");
        let e = parse_err("status == UP");
        assert!(e.contains("should start with `$`"), "{e}");
        let e = parse_err("[BODY].status == UP");
        assert!(e.contains("write `$.status`"), "{e}");
        let e = parse_err("size($.a) == 1");
        assert!(e.contains("unknown function `size()`"), "{e}");
        let e = parse_err("len($.a) x == 1");
        assert!(e.contains("should end with `)`"), "{e}");
        let e = parse_err("len() == 1");
        assert!(e.contains("needs a path"), "{e}");
        let e = parse_err("has(items) == true");
        assert!(e.contains("should start with `$`"), "{e}");
    }

    #[test]
    fn parse_error_bad_literal() {
        let e = parse_err("$.a == \"unterminated");
        assert!(
            e.starts_with("bad string `\"unterminated`: missing closing"),
            "{e}"
        );
        let e = parse_err(r#"$.a == "bad \q escape""#);
        assert!(e.starts_with("bad string"), "{e}");
        let e = parse_err("$.a == 'UP'");
        assert!(e.contains("double quotes"), "{e}");
        let e = parse_err("$.a == 1.2.3");
        assert!(e.starts_with("bad value `1.2.3`"), "{e}");
        let e = parse_err("$.a == two words");
        assert!(e.starts_with("bad value `two words`"), "{e}");
        let e = parse_err("$.a == [1, 2]");
        assert!(e.contains("is an array"), "{e}");
        let e = parse_err("$.a == True");
        assert!(e.contains("write `true`"), "{e}");
        let e = parse_err("$.a == NULL");
        assert!(e.contains("`\"NULL\"`"), "{e}");
    }

    #[test]
    fn parse_error_len_needs_number() {
        let e = parse_err("len($.items) > \"3\"");
        assert!(e.starts_with("`len()` compares with a number"), "{e}");
        assert!(e.contains("len($.items) > 0"), "{e}");
        assert!(parse_err("len($.items) == many").contains("is a string"));
        assert!(parse_err("len($.items) == true").contains("is a boolean"));
    }

    #[test]
    fn parse_error_ordering_needs_number() {
        let e = parse_err("$.version < \"2\"");
        assert!(
            e.starts_with("`<` compares numbers, but `\"2\"` is a string"),
            "{e}"
        );
        assert!(parse_err("$.a >= UP").contains("is a string"));
        assert!(parse_err("$.a > true").contains("is a boolean"));
        assert!(parse_err("$.a <= null").contains("is null"));
    }

    #[test]
    fn parse_error_has_needs_bool() {
        let e = parse_err("has($.a) == 1");
        assert!(e.contains("expected `has(PATH) == true|false`"), "{e}");
        assert!(parse_err("has($.a) < true").contains("not `< true`"));
        assert!(parse_err("has($.a) == yes").contains("has($.error) == false"));
    }
}
