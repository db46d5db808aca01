//! Calico's label-selector language, as used by `projectcalico.org/v3` policies.
//!
//! It lives beside the resource types because it is part of the API they define: the datastore
//! parses every selector-valued field when it reads a resource, and the model evaluates the
//! parsed selectors against endpoints' labels (through [`LabelSource`], which holds nothing of
//! the model's own state).
//!
//! Selectors appear in `NetworkPolicy`/`GlobalNetworkPolicy` `selector` and `namespaceSelector`,
//! and in rules' `source`/`destination` `selector`, `notSelector` and `namespaceSelector`. This
//! module mirrors the grammar and semantics of Calico's own implementation
//! (`libcalico-go/lib/selector/tokenizer/tokenizer.go`, `parser/parser.go`, `parser/ast.go`),
//! accepting exactly the strings Calico accepts (with one guard, see [`MAX_NESTING_DEPTH`]) and
//! evaluating them the same way.
//!
//! # Grammar
//!
//! ```text
//! selector   := <empty> | or
//! or         := and ( "||" and )*
//! and        := operation ( "&&" operation )*
//! operation  := "!"* ( "has(" key ")" | "all(" ")" | "global(" ")" | "(" or ")"
//!                    | key ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!                    | key ( "in" | "not in" ) "{" [ string ( "," string )* [ "," ] ] "}" )
//! key        := 1 to 512 of [A-Za-z0-9_./-]
//! string     := "'" any-but-' "'" | '"' any-but-" '"'
//! ```
//!
//! * `||` binds loosest, then `&&`; both are left-to-right and n-ary. A `!` applies to the single
//!   operation that follows it, so `!a == 'x' && b == 'y'` is `(!(a == 'x')) && b == 'y'`.
//!   Runs of `!` collapse: `!!has(a)` is `has(a)`.
//! * Whitespace is only spaces and tabs, allowed between any two tokens and inside `has( a )`,
//!   `all( )` and `global( )` — but not between `has`/`all`/`global` and `(`. Any other character
//!   outside a string literal, newlines included, is an error.
//! * String literals have no escapes: a literal runs to the next occurrence of its own quote
//!   character, so `'say "hi"'` and `"it's"` work but a string holding both quote characters
//!   cannot be written. A literal may contain any other character, newlines included.
//! * The multi-word operators may be written without the space (`startswith`, `endswith`,
//!   `notin`) or with several spaces or tabs. An operator keyword is only recognised directly
//!   after a label key, so `in`, `not`, `contains`, `has` and so on are otherwise ordinary keys:
//!   `contains contains 'contains'` and `not in {}` (key `not`) are valid selectors.
//! * A set may be empty (`{}`) and may end with a trailing comma (`{'a',}`), but `{,}` is invalid.
//!
//! # Semantics
//!
//! | expression              | label absent | label present with value `v`   |
//! |-------------------------|--------------|--------------------------------|
//! | `k == 's'`              | false        | `v == s`                       |
//! | `k != 's'`              | **true**     | `v != s`                       |
//! | `k in {...}`            | false        | `v` is in the set              |
//! | `k not in {...}`        | **true**     | `v` is not in the set          |
//! | `k contains 's'`        | false        | `v` contains `s`               |
//! | `k starts with 's'`     | false        | `v` starts with `s`            |
//! | `k ends with 's'`       | false        | `v` ends with `s`              |
//! | `has(k)`                | false        | true (even if `v` is empty)    |
//!
//! `all()` matches everything. `global()` matches what [`LabelSource::is_global`] says is a global
//! (non-namespaced) resource; see [`Expr::Global`] for how this relates to Calico.
//!
//! # Positions in errors
//!
//! [`SelectorError::position`] is a **0-based offset counted in characters** (Unicode scalar
//! values, not bytes) into the parsed text; an error at the end of the text has position equal to
//! the text's character count. Errors are reported at the first point, reading left to right,
//! where the text stops being a valid selector.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

/// Longest label key Calico accepts, in bytes (`tokenizer.MaxLabelLength`). Keys are ASCII, so
/// this is also their length in characters.
pub const MAX_LABEL_LENGTH: usize = 512;

/// Deepest nesting of parentheses [`Selector::parse`] accepts.
///
/// Calico itself has no limit; this guard keeps parsing, evaluation, formatting and dropping of
/// the tree from recursing without bound on adversarial input. A selector written by a person
/// never comes close.
pub const MAX_NESTING_DEPTH: usize = 100;

/// Where and why a selector failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}{}", expected_suffix(.expected))]
pub struct SelectorError {
    /// 0-based offset of the problem, in characters (not bytes) from the start of the text.
    pub position: usize,
    /// What was found there, e.g. `unexpected token "&&"`.
    pub message: String,
    /// What would have been accepted there, e.g. `a label key, has(), all(), global(), ! or (`;
    /// empty when there is nothing useful to say.
    pub expected: String,
}

fn expected_suffix(expected: &str) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(": expected {expected}")
    }
}

/// Labels a selector is evaluated against.
pub trait LabelSource {
    /// The value of label `key`, if the label is present.
    fn get(&self, key: &str) -> Option<&str>;

    /// Whether the labelled thing is a global (non-namespaced) resource, such as a host endpoint
    /// or a `GlobalNetworkSet`. This is what `global()` tests.
    fn is_global(&self) -> bool {
        false
    }
}

impl LabelSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
}

impl<S: BuildHasher> LabelSource for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
}

impl<T: LabelSource + ?Sized> LabelSource for &T {
    fn get(&self, key: &str) -> Option<&str> {
        (**self).get(key)
    }

    fn is_global(&self) -> bool {
        (**self).is_global()
    }
}

/// Labels together with whether their owner is global (not namespaced), for evaluating
/// selectors that use `global()`.
#[derive(Clone, Copy, Debug)]
pub struct Scoped<'a, L: ?Sized> {
    /// The labels.
    pub labels: &'a L,
    /// Whether the labelled resource is global (a host endpoint, a `GlobalNetworkSet`, …).
    pub is_global: bool,
}

impl<'a, L: ?Sized> Scoped<'a, L> {
    /// Labels of a global (non-namespaced) resource.
    pub fn global(labels: &'a L) -> Self {
        Self {
            labels,
            is_global: true,
        }
    }

    /// Labels of an endpoint, for an endpoint selector (a rule's `selector` or `notSelector`).
    /// There Calico's `global()` is true for every set of labels: its parser's `GlobalNode`
    /// evaluates to true, and only in a `namespaceSelector` does libcalico-go rewrite `global()`
    /// to `!has(projectcalico.org/namespace)`. (Calico's validator refuses `global()` in a
    /// rule's `selector`, not in its `notSelector`, where it excludes every endpoint.)
    pub fn endpoint(labels: &'a L) -> Self {
        Self {
            labels,
            is_global: true,
        }
    }

    /// Labels of a namespaced resource.
    pub fn namespaced(labels: &'a L) -> Self {
        Self {
            labels,
            is_global: false,
        }
    }
}

impl<L: LabelSource + ?Sized> LabelSource for Scoped<'_, L> {
    fn get(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }

    fn is_global(&self) -> bool {
        self.is_global
    }
}

/// A node of a parsed selector.
///
/// The tree is exactly what Calico's parser builds (`parser/ast.go`), except that a negation of
/// a negation — which Calico can only produce from `!(!x)` — is folded away, so equal trees mean
/// equal canonical forms and back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expr {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches global (non-namespaced) resources, as reported by
    /// [`LabelSource::is_global`].
    ///
    /// Calico only allows `global()` in a rule's `namespaceSelector`, where it turns it into
    /// `!has(projectcalico.org/namespace)` before evaluating
    /// (`libcalico-go/lib/backend/syncersv1/updateprocessors/rules.go`); its parser's own
    /// `GlobalNode.Evaluate` returns true for everything. Here `global()` tests the flag, so the
    /// caller says which meaning applies: [`Scoped::endpoint`] for an endpoint selector (true),
    /// the namespace's labels for a namespace selector (false: a workload is in a namespace).
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == "value"`.
    Eq { key: String, value: String },
    /// `key != "value"`; true when the label is absent.
    Ne { key: String, value: String },
    /// `key contains "value"`; false when the label is absent.
    Contains { key: String, value: String },
    /// `key starts with "value"`; false when the label is absent.
    StartsWith { key: String, value: String },
    /// `key ends with "value"`; false when the label is absent.
    EndsWith { key: String, value: String },
    /// `key in {...}`; false when the label is absent.
    In {
        key: String,
        values: BTreeSet<String>,
    },
    /// `key not in {...}`; true when the label is absent.
    NotIn {
        key: String,
        values: BTreeSet<String>,
    },
    /// `!operand`. The operand is never itself a `Not`.
    Not(Box<Expr>),
    /// `a && b && ...`, with at least two operands.
    And(Vec<Expr>),
    /// `a || b || ...`, with at least two operands.
    Or(Vec<Expr>),
}

impl Expr {
    /// Whether labels `labels` satisfy this expression.
    pub fn matches<L: LabelSource + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Expr::All => true,
            Expr::Global => labels.is_global(),
            Expr::Has(key) => labels.get(key).is_some(),
            Expr::Eq { key, value } => labels.get(key) == Some(value.as_str()),
            Expr::Ne { key, value } => labels.get(key) != Some(value.as_str()),
            Expr::Contains { key, value } => {
                labels.get(key).is_some_and(|v| v.contains(value.as_str()))
            }
            Expr::StartsWith { key, value } => labels
                .get(key)
                .is_some_and(|v| v.starts_with(value.as_str())),
            Expr::EndsWith { key, value } => {
                labels.get(key).is_some_and(|v| v.ends_with(value.as_str()))
            }
            Expr::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Expr::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Expr::Not(operand) => !operand.matches(labels),
            Expr::And(operands) => operands.iter().all(|op| op.matches(labels)),
            Expr::Or(operands) => operands.iter().any(|op| op.matches(labels)),
        }
    }

    /// The negation of `self`, folding a double negation away.
    fn negate(self) -> Expr {
        match self {
            Expr::Not(inner) => *inner,
            other => Expr::Not(Box::new(other)),
        }
    }

    fn collect_keys<'s>(&'s self, keys: &mut BTreeSet<&'s str>) {
        match self {
            Expr::All | Expr::Global => {}
            Expr::Has(key)
            | Expr::Eq { key, .. }
            | Expr::Ne { key, .. }
            | Expr::Contains { key, .. }
            | Expr::StartsWith { key, .. }
            | Expr::EndsWith { key, .. }
            | Expr::In { key, .. }
            | Expr::NotIn { key, .. } => {
                keys.insert(key);
            }
            Expr::Not(operand) => operand.collect_keys(keys),
            Expr::And(operands) | Expr::Or(operands) => {
                operands.iter().for_each(|op| op.collect_keys(keys))
            }
        }
    }

    fn uses_global(&self) -> bool {
        match self {
            Expr::Global => true,
            Expr::Not(operand) => operand.uses_global(),
            Expr::And(operands) | Expr::Or(operands) => operands.iter().any(Expr::uses_global),
            _ => false,
        }
    }
}

/// Writes `s` quoted as Calico's `String()` does: in double quotes unless it contains one.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = if s.contains('"') { '\'' } else { '"' };
    write!(f, "{quote}{s}{quote}")
}

fn write_set(
    f: &mut fmt::Formatter<'_>,
    key: &str,
    op: &str,
    values: &BTreeSet<String>,
) -> fmt::Result {
    write!(f, "{key} {op} {{")?;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, value)?;
    }
    f.write_str("}")
}

fn write_joined(f: &mut fmt::Formatter<'_>, operands: &[Expr], op: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, operand) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(op)?;
        }
        write!(f, "{operand}")?;
    }
    f.write_str(")")
}

/// The canonical form: what Calico's `Selector.String()` gives (see [`Selector::canonical`]).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, op, value) = match self {
            Expr::All => return f.write_str("all()"),
            Expr::Global => return f.write_str("global()"),
            Expr::Has(key) => return write!(f, "has({key})"),
            Expr::In { key, values } => return write_set(f, key, "in", values),
            Expr::NotIn { key, values } => return write_set(f, key, "not in", values),
            Expr::Not(operand) => return write!(f, "!{operand}"),
            Expr::And(operands) => return write_joined(f, operands, " && "),
            Expr::Or(operands) => return write_joined(f, operands, " || "),
            Expr::Eq { key, value } => (key, "==", value),
            Expr::Ne { key, value } => (key, "!=", value),
            Expr::Contains { key, value } => (key, "contains", value),
            Expr::StartsWith { key, value } => (key, "starts with", value),
            Expr::EndsWith { key, value } => (key, "ends with", value),
        };
        write!(f, "{key} {op} ")?;
        write_quoted(f, value)
    }
}

/// A parsed label selector.
///
/// Equality and hashing are those of the parsed tree, which corresponds one to one with the
/// [canonical form](Selector::canonical): selectors that differ only in whitespace, quoting,
/// redundant parentheses, doubled `!`, or the order and repetition of set members are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    root: Expr,
}

impl Selector {
    /// Parses `text`.
    ///
    /// As in Calico's parser, a text that is empty or only spaces and tabs parses as
    /// [`Selector::all`] (canonical form `all()`). Callers for which an empty field means
    /// something else — a namespaced `NetworkPolicy`'s rule `namespaceSelector`, where it means
    /// "this policy's namespace" — must check for the empty string before parsing.
    ///
    /// # Errors
    ///
    /// A [`SelectorError`] for the first point, from the left, where `text` stops being a valid
    /// selector, or where parentheses nest deeper than [`MAX_NESTING_DEPTH`].
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        Parser::new(text).parse_root().map(|root| Selector { root })
    }

    /// `all()`: the selector that matches everything.
    #[must_use]
    pub fn all() -> Selector {
        Selector { root: Expr::All }
    }

    /// `!all()`: the selector that matches nothing (Calico's `selector.NoMatch`).
    #[must_use]
    pub fn none() -> Selector {
        Selector {
            root: Expr::Not(Box::new(Expr::All)),
        }
    }

    /// Whether `labels` satisfy this selector.
    #[must_use]
    pub fn matches<L: LabelSource + ?Sized>(&self, labels: &L) -> bool {
        self.root.matches(labels)
    }

    /// The normalised text of this selector, identical to Calico's `Selector.String()`: single
    /// spaces around operators, strings in double quotes unless they contain one, sets sorted and
    /// without duplicates, every `&&`/`||` group in parentheses, other parentheses dropped.
    /// Parsing it gives back an equal selector.
    ///
    /// The one difference from Calico: for `!(!x)` Calico prints `!!x`, which it then reparses
    /// as `x`; here the double negation is folded at parse time, so the canonical form is that of
    /// `x` straight away.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.root.to_string()
    }

    /// The label keys the selector refers to.
    #[must_use]
    pub fn label_keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        self.root.collect_keys(&mut keys);
        keys.into_iter().map(str::to_owned).collect()
    }

    /// Whether the selector contains `global()` anywhere.
    #[must_use]
    pub fn uses_global(&self) -> bool {
        self.root.uses_global()
    }

    /// The parsed tree.
    #[must_use]
    pub fn expr(&self) -> &Expr {
        &self.root
    }
}

impl Default for Selector {
    /// [`Selector::all`], as for an empty selector.
    fn default() -> Self {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    /// The [canonical form](Selector::canonical).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}

impl serde::Serialize for Selector {
    /// Serialises as the canonical form.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

const EXPECT_OPERAND: &str = "a label key, has(), all(), global(), ! or (";
const EXPECT_OPERATOR: &str = "an operator: ==, !=, in, not in, contains, starts with or ends with";
const EXPECT_STRING: &str = "a quoted string";
const EXPECT_SET: &str = "{ and a set of quoted strings";
const EXPECT_SET_ITEM: &str = "a quoted string or }";
const EXPECT_SET_SEPARATOR: &str = ", or }";
const EXPECT_AFTER_TOP: &str = "&&, || or the end of the selector";
const EXPECT_AFTER_NESTED: &str = "&&, || or )";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Label,
    Str,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    In,
    Not,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    All,
    Has,
    Global,
    LParen,
    RParen,
    And,
    Or,
    Eof,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    kind: Kind,
    /// The label key (for `Label` and `Has`) or the string's contents (for `Str`).
    value: &'a str,
    /// Byte offsets of the token's text.
    start: usize,
    end: usize,
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

/// Length of the run of label-key characters at the start of `s`.
fn key_len(s: &str) -> usize {
    s.bytes().take_while(|&b| is_key_byte(b)).count()
}

/// Length of the run of spaces and tabs at the start of `s`.
fn space_len(s: &str) -> usize {
    s.bytes().take_while(|&b| b == b' ' || b == b'\t').count()
}

/// Whether `s` starts at a word boundary: end of text, or not a label-key character.
fn at_word_boundary(s: &str) -> bool {
    s.bytes().next().is_none_or(|b| !is_key_byte(b))
}

/// If `s` starts with the words `words`, each followed by optional spaces, and then a word
/// boundary, the length of all that. Like Calico, `starts with` may also be `startswith`.
fn operator_len(s: &str, words: &[&str]) -> Option<usize> {
    let mut len = 0;
    for word in words {
        if !s.get(len..)?.starts_with(word) {
            return None;
        }
        len += word.len();
        // Calico skips whitespace after each word of a multi-word operator, the last included,
        // before it checks for the word boundary; after `contains` and `in` it does not.
        if words.len() > 1 {
            len += space_len(s.get(len..)?);
        }
    }
    at_word_boundary(s.get(len..)?).then_some(len)
}

/// Calico's tokenizer, run lazily so that the first error from the left is the one reported. It
/// produces the same tokens as Calico's `AppendTokens`, in the same order, so it accepts and
/// rejects the same texts.
struct Lexer<'a> {
    input: &'a str,
    /// Byte offset of the next unread character; always on a character boundary.
    pos: usize,
    /// Kind of the previous token: operator keywords are only recognised right after a label.
    last: Option<Kind>,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Lexer {
            input,
            pos: 0,
            last: None,
        }
    }

    fn rest_at(&self, pos: usize) -> &'a str {
        self.input.get(pos..).unwrap_or("")
    }

    fn error(&self, byte_pos: usize, message: String, expected: &str) -> SelectorError {
        make_error(self.input, byte_pos, message, expected)
    }

    /// "unexpected character 'x'" or "unexpected end of selector" for what is at `pos`.
    fn found_at(&self, pos: usize) -> String {
        match self.rest_at(pos).chars().next() {
            Some(c) => format!("unexpected character {c:?}"),
            None => "unexpected end of selector".to_owned(),
        }
    }

    /// Produces a token ending at byte `end`.
    fn emit(&mut self, kind: Kind, value: &'a str, start: usize, end: usize) -> Token<'a> {
        self.pos = end;
        self.last = Some(kind);
        Token {
            kind,
            value,
            start,
            end,
        }
    }

    /// Reads the next token. `expected` describes what the parser is looking for, for the error
    /// about a character that cannot start any token.
    fn next_token(&mut self, expected: &str) -> Result<Token<'a>, SelectorError> {
        let start = self.pos + space_len(self.rest_at(self.pos));
        let rest = self.rest_at(start);
        let Some(&first) = rest.as_bytes().first() else {
            return Ok(self.emit(Kind::Eof, "", start, start));
        };
        let simple = |kind| (kind, 1);
        let (kind, len) = match first {
            b'(' => simple(Kind::LParen),
            b')' => simple(Kind::RParen),
            b'{' => simple(Kind::LBrace),
            b'}' => simple(Kind::RBrace),
            b',' => simple(Kind::Comma),
            b'"' | b'\'' => {
                let quote = char::from(first);
                let body = &rest[1..];
                let Some(len) = body.find(quote) else {
                    return Err(self.error(
                        start,
                        "unterminated string".to_owned(),
                        &format!("a closing {quote} (strings have no escapes)"),
                    ));
                };
                return Ok(self.emit(Kind::Str, &body[..len], start, start + len + 2));
            }
            b'=' | b'&' | b'|' => {
                let (double, kind) = match first {
                    b'=' => ("==", Kind::Eq),
                    b'&' => ("&&", Kind::And),
                    _ => ("||", Kind::Or),
                };
                if !rest.starts_with(double) {
                    let single = &double[..1];
                    return Err(self.error(
                        start,
                        format!("unexpected {single:?}"),
                        &format!("{double:?}"),
                    ));
                }
                (kind, 2)
            }
            b'!' if rest.starts_with("!=") => (Kind::Ne, 2),
            b'!' => simple(Kind::Not),
            _ => return self.word(start, expected),
        };
        Ok(self.emit(kind, "", start, start + len))
    }

    /// Reads a token that does not start with punctuation: an operator keyword after a label,
    /// otherwise `has(key)`, `all()`, `global()` or a label key.
    fn word(&mut self, start: usize, expected: &str) -> Result<Token<'a>, SelectorError> {
        let rest = self.rest_at(start);
        if self.last == Some(Kind::Label) {
            const OPERATORS: [(&[&str], Kind); 5] = [
                (&["contains"], Kind::Contains),
                (&["starts", "with"], Kind::StartsWith),
                (&["ends", "with"], Kind::EndsWith),
                (&["not", "in"], Kind::NotIn),
                (&["in"], Kind::In),
            ];
            for (words, kind) in OPERATORS {
                if let Some(len) = operator_len(rest, words) {
                    return Ok(self.emit(kind, "", start, start + len));
                }
            }
            let word_len = key_len(rest);
            let message = if word_len == 0 {
                self.found_at(start)
            } else {
                format!("unexpected {:?}", &rest[..word_len])
            };
            return Err(self.error(start, message, EXPECT_OPERATOR));
        }
        for (function, kind) in [
            ("has(", Kind::Has),
            ("all(", Kind::All),
            ("global(", Kind::Global),
        ] {
            if rest.starts_with(function) {
                return self.function(start, function, kind);
            }
        }
        let key = self.key(start, expected)?;
        Ok(self.emit(Kind::Label, key, start, start + key.len()))
    }

    /// Reads the rest of `has(key)`, `all()` or `global()`, whose opening `function` (ending in
    /// `(`) starts at `start`.
    fn function(
        &mut self,
        start: usize,
        function: &str,
        kind: Kind,
    ) -> Result<Token<'a>, SelectorError> {
        let mut pos = start + function.len();
        pos += space_len(self.rest_at(pos));
        let mut key = "";
        if kind == Kind::Has {
            key = self.key(pos, "a label key inside has()")?;
            pos += key.len();
            pos += space_len(self.rest_at(pos));
        }
        if !self.rest_at(pos).starts_with(')') {
            return Err(self.error(
                pos,
                self.found_at(pos),
                &format!("\")\" to close {function}"),
            ));
        }
        Ok(self.emit(kind, key, start, pos + 1))
    }

    /// The label key at `pos`, which must be there.
    fn key(&self, pos: usize, expected: &str) -> Result<&'a str, SelectorError> {
        let rest = self.rest_at(pos);
        let key = &rest[..key_len(rest)];
        if key.is_empty() {
            return Err(self.error(pos, self.found_at(pos), expected));
        }
        if key.len() > MAX_LABEL_LENGTH {
            return Err(self.error(
                pos,
                format!("label key is {} characters long", key.len()),
                &format!("a label key of at most {MAX_LABEL_LENGTH} characters"),
            ));
        }
        Ok(key)
    }
}

fn make_error(input: &str, byte_pos: usize, message: String, expected: &str) -> SelectorError {
    let position = input
        .get(..byte_pos)
        .map_or(byte_pos, |before| before.chars().count());
    SelectorError {
        position,
        message,
        expected: expected.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// Recursive descent over Calico's grammar (`parser.go`). Recursion happens only at `(`, and is
/// bounded by [`MAX_NESTING_DEPTH`].
struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token<'a>>,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            lexer: Lexer::new(input),
            peeked: None,
            depth: 0,
        }
    }

    /// The next token, without consuming it.
    fn peek(&mut self, expected: &str) -> Result<Token<'a>, SelectorError> {
        if let Some(token) = self.peeked {
            return Ok(token);
        }
        let token = self.lexer.next_token(expected)?;
        self.peeked = Some(token);
        Ok(token)
    }

    /// Consumes the peeked token.
    fn bump(&mut self) {
        self.peeked = None;
    }

    fn unexpected(&self, token: Token<'a>, expected: &str) -> SelectorError {
        let text = self.lexer.input.get(token.start..token.end).unwrap_or("");
        let message = match token.kind {
            Kind::Eof => "unexpected end of selector".to_owned(),
            Kind::Label => format!("unexpected label key {:?}", token.value),
            Kind::Str => format!("unexpected string {text}"),
            _ => format!("unexpected token {text:?}"),
        };
        make_error(self.lexer.input, token.start, message, expected)
    }

    fn after_operand(&self) -> &'static str {
        if self.depth == 0 {
            EXPECT_AFTER_TOP
        } else {
            EXPECT_AFTER_NESTED
        }
    }

    fn parse_root(&mut self) -> Result<Expr, SelectorError> {
        if self.peek(EXPECT_OPERAND)?.kind == Kind::Eof {
            return Ok(Expr::All);
        }
        let expr = self.parse_or()?;
        let token = self.peek(EXPECT_AFTER_TOP)?;
        if token.kind != Kind::Eof {
            return Err(self.unexpected(token, EXPECT_AFTER_TOP));
        }
        Ok(expr)
    }

    fn parse_or(&mut self) -> Result<Expr, SelectorError> {
        let mut operands = vec![self.parse_and()?];
        while self.peek(self.after_operand())?.kind == Kind::Or {
            self.bump();
            operands.push(self.parse_and()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Expr::Or(operands)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, SelectorError> {
        let mut operands = vec![self.parse_operation()?];
        while self.peek(self.after_operand())?.kind == Kind::And {
            self.bump();
            operands.push(self.parse_operation()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Expr::And(operands)
        })
    }

    /// An operation, with any number of leading `!`.
    fn parse_operation(&mut self) -> Result<Expr, SelectorError> {
        let mut negated = false;
        let mut token = self.peek(EXPECT_OPERAND)?;
        while token.kind == Kind::Not {
            negated = !negated;
            self.bump();
            token = self.peek(EXPECT_OPERAND)?;
        }
        let expr = match token.kind {
            Kind::Has => {
                self.bump();
                Expr::Has(token.value.to_owned())
            }
            Kind::All => {
                self.bump();
                Expr::All
            }
            Kind::Global => {
                self.bump();
                Expr::Global
            }
            Kind::Label => {
                self.bump();
                self.parse_comparison(token.value)?
            }
            Kind::LParen => {
                if self.depth >= MAX_NESTING_DEPTH {
                    return Err(make_error(
                        self.lexer.input,
                        token.start,
                        format!("parentheses nested more than {MAX_NESTING_DEPTH} deep"),
                        "",
                    ));
                }
                self.bump();
                self.depth += 1;
                let inner = self.parse_or()?;
                let close = self.peek(EXPECT_AFTER_NESTED)?;
                if close.kind != Kind::RParen {
                    return Err(self.unexpected(close, EXPECT_AFTER_NESTED));
                }
                self.bump();
                self.depth -= 1;
                inner
            }
            _ => return Err(self.unexpected(token, EXPECT_OPERAND)),
        };
        Ok(if negated { expr.negate() } else { expr })
    }

    /// The operator and operand after label key `key`.
    fn parse_comparison(&mut self, key: &str) -> Result<Expr, SelectorError> {
        let op = self.peek(EXPECT_OPERATOR)?;
        let key = key.to_owned();
        let make: fn(String, String) -> Expr = match op.kind {
            Kind::Eq => |key, value| Expr::Eq { key, value },
            Kind::Ne => |key, value| Expr::Ne { key, value },
            Kind::Contains => |key, value| Expr::Contains { key, value },
            Kind::StartsWith => |key, value| Expr::StartsWith { key, value },
            Kind::EndsWith => |key, value| Expr::EndsWith { key, value },
            Kind::In | Kind::NotIn => {
                self.bump();
                let values = self.parse_set()?;
                return Ok(if op.kind == Kind::In {
                    Expr::In { key, values }
                } else {
                    Expr::NotIn { key, values }
                });
            }
            _ => return Err(self.unexpected(op, EXPECT_OPERATOR)),
        };
        self.bump();
        let value = self.peek(EXPECT_STRING)?;
        if value.kind != Kind::Str {
            return Err(self.unexpected(value, EXPECT_STRING));
        }
        self.bump();
        Ok(make(key, value.value.to_owned()))
    }

    /// `{ "a", "b", ... }`, possibly empty, possibly with a trailing comma.
    fn parse_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let open = self.peek(EXPECT_SET)?;
        if open.kind != Kind::LBrace {
            return Err(self.unexpected(open, EXPECT_SET));
        }
        self.bump();
        let mut values = BTreeSet::new();
        loop {
            let item = self.peek(EXPECT_SET_ITEM)?;
            match item.kind {
                Kind::RBrace => break,
                Kind::Str => {
                    self.bump();
                    values.insert(item.value.to_owned());
                }
                _ => return Err(self.unexpected(item, EXPECT_SET_ITEM)),
            }
            let separator = self.peek(EXPECT_SET_SEPARATOR)?;
            match separator.kind {
                Kind::Comma => self.bump(),
                Kind::RBrace => break,
                _ => return Err(self.unexpected(separator, EXPECT_SET_SEPARATOR)),
            }
        }
        self.bump();
        Ok(values)
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    /// (selector, labels, expected match), mostly from Calico's `parser_test.go`.
    /// A selector, the labels to evaluate it against, and whether it should match.
    type MatchCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    const MATCH_CASES: &[MatchCase] = &[
        // ==
        (r#"a == "b""#, &[("a", "b")], true),
        (r#"a == "b""#, &[("a", "b"), ("c", "d")], true),
        (r#"a == "b""#, &[], false),
        (r#"a == "b""#, &[("a", "c")], false),
        (r#"a == "b""#, &[("c", "d")], false),
        ("a == 'a'", &[("a", "a")], true),
        ("a == 'a'", &[("a", "b")], false),
        ("a == 'a'", &[], false),
        ("a == ''", &[("a", "")], true),
        ("a == ''", &[], false),
        ("a=='a'", &[("a", "a")], true),
        ("a\t==\t'a'", &[("a", "a")], true),
        // !=: true when the label is absent.
        (r#"a != "b""#, &[("a", "a")], true),
        (r#"a != "a""#, &[], true),
        (r#"a != "a""#, &[("a", "a")], false),
        ("a != 'a'", &[("a", "a")], false),
        ("a!='a'", &[("a", "b")], true),
        // in / not in
        (r#"a in {"'", '"', "c"}"#, &[("a", "c")], true),
        (r#"a in {"'", '"', "c"}"#, &[("a", "\"")], true),
        (r#"a in {"'", '"', "c"}"#, &[("a", "'")], true),
        (r#"a in {"'", '"', "c"}"#, &[], false),
        (r#"a in {"'", '"', "c"}"#, &[("a", "e")], false),
        (r#"a not in {"'", '"', "c"}"#, &[], true),
        (r#"a not in {"'", '"', "c"}"#, &[("a", "e")], true),
        (r#"a not in {"'", '"', "c"}"#, &[("a", "c")], false),
        (r#"a not in {"'", '"', "c"}"#, &[("a", "'")], false),
        (r#"a in {"a"}"#, &[("a", "a")], true),
        (r#"a in {"a"}"#, &[("a", "b")], false),
        (r#"a in {"a", "b"}"#, &[("a", "b")], true),
        (r#"a in {"a", "b"}"#, &[("a", "c")], false),
        (r#"a not in {"d", "e"}"#, &[("a", "a")], true),
        (r#"a not in {"a"}"#, &[("a", "a")], false),
        ("a in {}", &[("a", "")], false),
        ("a in {}", &[], false),
        ("a not in {}", &[], true),
        ("a not in {}", &[("a", "x")], true),
        ("a in {'x',}", &[("a", "x")], true),
        ("a in{'x'}", &[("a", "x")], true),
        ("a notin{'x'}", &[("a", "x")], false),
        ("a not \t in {'x'}", &[("a", "y")], true),
        (r#"!a in {"a"}"#, &[("a", "b")], true),
        (r#"!a in {"a"}"#, &[], true),
        // contains / starts with / ends with: false when absent.
        (r#"a contains "a""#, &[("a", "a")], true),
        (r#"a contains "a""#, &[("a", "bab")], true),
        (r#"a contains "a""#, &[("a", "aaa"), ("b", "c")], true),
        (r#"a contains "a""#, &[], false),
        (r#"a contains "a""#, &[("a", "b")], false),
        (r#"a contains "a""#, &[("b", "aaa")], false),
        ("a contains ''", &[("a", "")], true),
        ("a contains ''", &[], false),
        ("a contains'x'", &[("a", "yxy")], true),
        (r#"a starts with "a""#, &[("a", "abb")], true),
        (r#"a starts with "a""#, &[("a", "baa")], false),
        (r#"a starts with "a""#, &[], false),
        ("a startswith 'a'", &[("a", "ab")], true),
        ("a starts \t with 'a'", &[("a", "ab")], true),
        (r#"a ends with "a""#, &[("a", "bba")], true),
        (r#"a ends with "a""#, &[("a", "aab")], false),
        (r#"a ends with "a""#, &[("b", "aaa")], false),
        ("a endswith 'a'", &[("a", "ba")], true),
        ("!a contains 'x'", &[], true),
        ("!a starts with 'x'", &[], true),
        // has
        ("has(a)", &[("a", "b")], true),
        ("has(a)", &[("a", "")], true),
        ("has(b)", &[("a", "b")], false),
        ("has( \ta\t )", &[("a", "b")], true),
        ("!has(a)", &[("b", "b")], true),
        ("!has(a)", &[("a", "b")], false),
        ("! has(a)", &[("a", "b")], false),
        ("!!has(b)", &[("a", "b")], false),
        ("!!!has(a)", &[("a", "b")], false),
        ("!! ! has(a)", &[("a", "b")], false),
        ("! !!has(a)", &[("a", "b")], false),
        ("!(!has(a))", &[("a", "b")], true),
        ("!(!(!has(a)))", &[("a", "b")], false),
        // all(), empty
        ("", &[], true),
        (" ", &[], true),
        ("\t", &[("a", "b")], true),
        ("", &[("a", "b")], true),
        ("all()", &[], true),
        (" all( ) ", &[("a", "b")], true),
        ("(all())", &[], true),
        ("!all()", &[], false),
        // Boolean expressions
        ("a == 'a1' && b == 'b1'", &[("a", "a1"), ("b", "b1")], true),
        ("a == 'a1' && b != 'b1'", &[("a", "a1"), ("b", "b1")], false),
        ("a != 'a1' && b == 'b1'", &[("a", "a1"), ("b", "b1")], false),
        ("a != 'a1' && b != 'b1'", &[("a", "a1"), ("b", "b1")], false),
        (
            "a != 'a1' && !b == 'b1'",
            &[("a", "a1"), ("b", "b1")],
            false,
        ),
        (
            "!a == 'a1' && b == 'b1'",
            &[("a", "a1"), ("b", "b1")],
            false,
        ),
        ("has(a) && !has(b)", &[("a", "a")], true),
        ("!has(b) && has(a)", &[("a", "a")], true),
        ("!(!has(a) || has(b))", &[("a", "a")], true),
        ("!(has(b) || !has(a))", &[("a", "a")], true),
        ("a == 'a1' || b == 'b1'", &[("a", "a1"), ("b", "b1")], true),
        ("a == 'a1' || b != 'b1'", &[("a", "a1"), ("b", "b1")], true),
        ("a != 'a1' || b == 'b1'", &[("a", "a1"), ("b", "b1")], true),
        ("a != 'a1' || b != 'b1'", &[("a", "a1"), ("b", "b1")], false),
        (
            "! a == 'a1' || ! b == 'b1'",
            &[("a", "a1"), ("b", "b1")],
            false,
        ),
        ("a=='b'&&c=='d'||e=='f'", &[("e", "f")], true),
        // Precedence: && binds tighter than ||, ! tighter than both.
        ("has(a) || has(b) && has(c)", &[("a", "")], true),
        ("(has(a) || has(b)) && has(c)", &[("a", "")], false),
        ("has(c) && has(b) || has(a)", &[("a", "")], true),
        ("has(c) && (has(b) || has(a))", &[("a", "")], false),
        ("!has(a) && has(b)", &[("a", ""), ("b", "")], false),
        ("!has(a) || has(b)", &[("a", ""), ("b", "")], true),
        ("!(has(a) || has(b))", &[("b", "")], false),
        ("!has(a) || has(b)", &[], true),
        ("((((has(a)))))", &[("a", "")], true),
        // Strings: no escapes, the other quote is literal, newlines are allowed inside.
        (r#"a == "it's""#, &[("a", "it's")], true),
        (r#"a == 'say "hi"'"#, &[("a", "say \"hi\"")], true),
        (r"a == 'x\'", &[("a", "x\\")], true),
        (r#"a == 'x\"'"#, &[("a", "x\\\"")], true),
        ("a == 'two\nlines'", &[("a", "two\nlines")], true),
        ("a == 'é'", &[("a", "é")], true),
        ("a == '{, }'", &[("a", "{, }")], true),
        ("a == '&& ||'", &[("a", "&& ||")], true),
        // Key syntax: prefixes, digits, dots, dashes, slashes, underscores, keyword-like keys.
        (
            "projectcalico.org/namespace == 'prod'",
            &[("projectcalico.org/namespace", "prod")],
            true,
        ),
        (
            "app.kubernetes.io/name in {'web'}",
            &[("app.kubernetes.io/name", "web")],
            true,
        ),
        (
            "has(calico/k8s_NS-.1/role)",
            &[("calico/k8s_NS-.1/role", "")],
            true,
        ),
        (
            "calico/k8s_ns == 'kube-system' && k8s-app == 'kube-dns'",
            &[("calico/k8s_ns", "kube-system"), ("k8s-app", "kube-dns")],
            true,
        ),
        ("1 == '1'", &[("1", "1")], true),
        ("-a == 'b'", &[("-a", "b")], true),
        (
            "contains contains 'contains'",
            &[("contains", "xcontainsx")],
            true,
        ),
        ("in in {'in'}", &[("in", "in")], true),
        ("not in {'x'}", &[("not", "x")], true),
        ("not not in {'x'}", &[("not", "x")], false),
        ("has == 'x'", &[("has", "x")], true),
        ("all != 'x'", &[("all", "x")], false),
        ("global == 'x'", &[("global", "x")], true),
        (
            "startswith starts with 'v'",
            &[("startswith", "value")],
            true,
        ),
        ("A == 'B'", &[("a", "B")], false),
    ];

    #[test]
    fn matches_like_calico() {
        for &(text, pairs, expected) in MATCH_CASES {
            let selector = parse(text);
            let map = labels(pairs);
            assert_eq!(
                selector.matches(&map),
                expected,
                "{text:?} against {pairs:?}"
            );
            let canonical = selector.canonical();
            let reparsed = parse(&canonical);
            assert_eq!(reparsed, selector, "{text:?} canonical {canonical:?}");
            assert_eq!(
                reparsed.matches(&map),
                expected,
                "{canonical:?} against {pairs:?}"
            );
            let hashed: HashMap<String, String> = map.clone().into_iter().collect();
            assert_eq!(
                selector.matches(&hashed),
                expected,
                "{text:?} against HashMap {pairs:?}"
            );
        }
    }

    #[test]
    fn global_tests_the_scope_flag() {
        let map = labels(&[("a", "b")]);
        let cases = [
            ("global()", false, true),
            (" global( ) ", false, true),
            ("!global()", true, false),
            ("global() || has(x)", false, true),
            ("global() && a == 'b'", false, true),
            ("all()", true, true),
            ("all() && !global()", true, false),
        ];
        for (text, namespaced_expected, global_expected) in cases {
            let selector = parse(text);
            assert_eq!(
                selector.matches(&Scoped::namespaced(&map)),
                namespaced_expected,
                "{text} namespaced"
            );
            assert_eq!(
                selector.matches(&map),
                namespaced_expected,
                "{text} plain map"
            );
            assert_eq!(
                selector.matches(&Scoped::global(&map)),
                global_expected,
                "{text} global"
            );
            assert_eq!(selector.uses_global(), text.contains("global"), "{text}");
        }
        assert!(!parse("all() && has(global)").uses_global());
    }

    #[test]
    fn empty_selector_is_all() {
        assert_eq!(parse(""), Selector::all());
        assert_eq!(parse(" \t "), Selector::all());
        assert_eq!(parse("(all())"), Selector::all());
        assert_eq!(Selector::default(), Selector::all());
        assert_eq!(Selector::all().canonical(), "all()");
        assert_eq!(Selector::none().canonical(), "!all()");
        assert_eq!(parse("!all()"), Selector::none());
        assert!(!Selector::none().matches(&labels(&[])));
    }

    /// (input, canonical form), from Calico's `canonicalisationTests` and more.
    const CANONICAL_CASES: &[(&str, &str)] = &[
        ("", "all()"),
        (" all() ", "all()"),
        (" (all() )", "all()"),
        ("global( )", "global()"),
        ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
        (r#"! (a == "b"&&! c != "d")"#, r#"!(a == "b" && !c != "d")"#),
        (r#"a == "'""#, r#"a == "'""#),
        (r#"a == '"'"#, r#"a == '"'"#),
        (r#"a contains '"'"#, r#"a contains '"'"#),
        (r#"a contains "'""#, r#"a contains "'""#),
        (r#"a startswith '"'"#, r#"a starts with '"'"#),
        (r#"a endswith "'""#, r#"a ends with "'""#),
        (r#"a!='"'"#, r#"a != '"'"#),
        (r#"a in {"d"}"#, r#"a in {"d"}"#),
        (r#"a in {"a", "b"}"#, r#"a in {"a", "b"}"#),
        (r#"a in {"d", "a", "b"}"#, r#"a in {"a", "b", "d"}"#),
        (
            r#"a in {"z", "x", "y", "a"}"#,
            r#"a in {"a", "x", "y", "z"}"#,
        ),
        (
            r#"a in {"z", "z", "x", "y", "x", "a"}"#,
            r#"a in {"a", "x", "y", "z"}"#,
        ),
        ("a in {'x',}", r#"a in {"x"}"#),
        ("a notin {}", "a not in {}"),
        (r#"a in {'"', "'"}"#, r#"a in {'"', "'"}"#),
        ("a == 'b'", r#"a == "b""#),
        ("!!has(a)", "has(a)"),
        ("!(!has(a))", "has(a)"),
        ("!!(has(a) && has(b))", "(has(a) && has(b))"),
        ("!(has(a))", "!has(a)"),
        ("!(k == 'v')", r#"!k == "v""#),
        (
            "a == 'b' && c == 'd' && e == 'f'",
            r#"(a == "b" && c == "d" && e == "f")"#,
        ),
        (
            "(a == 'b' && c == 'd') && e == 'f'",
            r#"((a == "b" && c == "d") && e == "f")"#,
        ),
        (
            "has(a) || has(b) && has(c)",
            "(has(a) || (has(b) && has(c)))",
        ),
        (
            "(has(a) || has(b)) && has(c)",
            "((has(a) || has(b)) && has(c))",
        ),
        (
            "!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
            r#"!(!((k == "v" && has(t)) || all()) && a in {"b", "c"})"#,
        ),
    ];

    #[test]
    fn canonical_form_matches_calico_and_round_trips() {
        for &(input, expected) in CANONICAL_CASES {
            let selector = parse(input);
            assert_eq!(
                selector.canonical(),
                expected,
                "canonical form of {input:?}"
            );
            assert_eq!(selector.to_string(), expected);
            let reparsed = parse(expected);
            assert_eq!(reparsed, selector, "{input:?} round trip");
            assert_eq!(reparsed.canonical(), expected);
            assert_eq!(expected.parse::<Selector>().as_ref(), Ok(&selector));
        }
    }

    #[test]
    fn equal_selectors_hash_equal() {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let hash = |s: &Selector| {
            let mut h = DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        let a = parse("a in {'y', 'x', 'x'} && has( b )");
        let b = parse(r#"(a in {"x","y"}&&has(b))"#);
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(parse("a == 'x'"), parse("a != 'x'"));
    }

    #[test]
    fn label_keys_are_collected() {
        let selector = parse(
            "a == 'x' && (has(b) || !c in {}) && d/e.f not in {'y'} || all() || global() || a != ''",
        );
        let keys: Vec<String> = selector.label_keys().into_iter().collect();
        assert_eq!(keys, ["a", "b", "c", "d/e.f"]);
        assert!(Selector::all().label_keys().is_empty());
    }

    #[test]
    fn serializes_as_canonical_string() {
        let selector = parse("a=='b'");
        assert_eq!(
            serde_json::to_string(&selector).ok().as_deref(),
            Some(r#""a == \"b\"""#)
        );
    }

    /// (selector, 0-based character position of the error), from Calico's `badSelectors`, its
    /// tokenizer tests, and more.
    const INVALID_CASES: &[(&str, usize)] = &[
        ("b == b", 5),
        ("b contains b", 11),
        // Calico skips the spaces after `starts with`/`ends with` before checking for a word
        // boundary, so a label key there makes the operator itself unrecognised.
        ("b starts with b", 2),
        ("b ends with b", 2),
        ("'b1' == b", 0),
        ("b", 1),
        ("a b", 2),
        ("!", 1),
        (r#"foo == "bar" &"#, 13),
        (r#"foo == "bar" |"#, 13),
        ("foo != ||", 7),
        (r#"foo in {"", ||"#, 12),
        (r#"foo in """#, 7),
        (r#""FOO"#, 0),
        (r#""FOO'"#, 0),
        ("'FOO", 0),
        ("(", 1),
        (r#"(a == "foo""#, 11),
        (")", 0),
        ("()", 1),
        ("%", 0),
        (r#"a == "b" && %"#, 12),
        (r#"a == "b" || %"#, 12),
        ("a ", 2),
        ("has(foo) &&", 11),
        // Tokenizer errors.
        (r#"label == "value"#, 9),
        ("label == 'value", 9),
        (r#"label = "value""#, 6),
        ("all(", 4),
        ("global(", 7),
        ("has()", 4),
        ("has(foo", 7),
        ("has( foo ", 9),
        ("has(foo bar)", 8),
        ("has(%)", 4),
        (r#"a == "b" & has(foo)"#, 9),
        (r#"label starts foo "value""#, 6),
        (r#"label inf "value""#, 6),
        (r#"label ends foo "value""#, 6),
        (r#"label ends withs "value""#, 6),
        (r#"label squiggles "value""#, 6),
        ("label containsx 'v'", 6),
        ("a not in x", 2),
        ("a in x", 5),
        // Whitespace is only spaces and tabs.
        ("a == 'b'\n", 8),
        ("\na == 'b'", 0),
        ("a == 'b'\r\n&& has(c)", 8),
        ("a ==\u{a0}'b'", 4),
        // Function names cannot be separated from their parenthesis.
        ("has (a)", 4),
        ("all ()", 4),
        ("global ()", 7),
        // Sets.
        ("a in {,}", 6),
        ("a in {'x' 'y'}", 10),
        ("a in {'x',,}", 10),
        ("a in {'x'", 9),
        ("a in {x}", 6),
        ("a in 'x'", 5),
        ("a in {'x'} in", 11),
        // Operators.
        ("a === 'b'", 4),
        ("a !== 'b'", 4),
        ("a == 'b' &&& c", 11),
        ("!= 'a'", 0),
        ("a not 'x'", 2),
        ("a == 'b')", 8),
        ("a == 'b' b == 'c'", 9),
        ("a == 'b' has(c)", 9),
        ("a has(b)", 2),
        ("a == 'b' ||", 11),
        ("&& a == 'b'", 0),
        ("a == 'b' && || c == 'd'", 12),
        ("(a == 'b'))", 10),
        ("((a == 'b')", 11),
        ("a ! = 'b'", 2),
        ("!!", 2),
        // Positions count characters, not bytes.
        ("a == 'é' && %", 12),
        ("ü == 'x'", 0),
        ("a == 'ü' b", 9),
    ];

    #[test]
    fn invalid_selectors_report_position() {
        for &(text, position) in INVALID_CASES {
            match Selector::parse(text) {
                Ok(selector) => panic!("{text:?} should not parse, got {selector}"),
                Err(error) => {
                    assert_eq!(error.position, position, "{text:?}: {error}");
                    assert!(!error.message.is_empty(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn label_key_length_limit() {
        let longest = "a".repeat(MAX_LABEL_LENGTH);
        assert!(Selector::parse(&format!("{longest} == 'v'")).is_ok());
        assert!(Selector::parse(&format!("has({longest})")).is_ok());
        let error = Selector::parse(&format!("x == 'v' || {longest}a == 'v'")).err();
        assert_eq!(error.map(|e| e.position), Some(12));
        let error = Selector::parse(&format!("has( {longest}a)")).err();
        assert_eq!(error.map(|e| e.position), Some(5));
    }

    #[test]
    fn error_messages_say_what_was_expected() {
        let error = Selector::parse("a == 'b' && && c").err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some(
                r#"unexpected token "&&" at position 12: expected a label key, has(), all(), global(), ! or ("#
            )
        );
        let cases = [
            (
                "b",
                "unexpected end of selector at position 1: expected an operator",
            ),
            (
                "a b",
                r#"unexpected "b" at position 2: expected an operator"#,
            ),
            (
                "a == b",
                r#"unexpected label key "b" at position 5: expected a quoted string"#,
            ),
            (
                "'x' == a",
                "unexpected string 'x' at position 0: expected a label key",
            ),
            (
                "a in 'x'",
                "unexpected string 'x' at position 5: expected { and a set",
            ),
            (
                "a in {'x' 'y'}",
                "unexpected string 'y' at position 10: expected , or }",
            ),
            (
                "(has(a)",
                "unexpected end of selector at position 7: expected &&, || or )",
            ),
            (
                "has(a))",
                r#"unexpected token ")" at position 6: expected &&, || or the end of the selector"#,
            ),
            (
                "a == 'x",
                "unterminated string at position 5: expected a closing '",
            ),
            ("a = 'x'", r#"unexpected "=" at position 2: expected "==""#),
            (
                "has(a b)",
                r#"unexpected character 'b' at position 6: expected ")" to close has("#,
            ),
            (
                "has()",
                "unexpected character ')' at position 4: expected a label key inside has()",
            ),
            (
                "a == 'b' && %",
                "unexpected character '%' at position 12: expected a label key",
            ),
            (
                "a == 'b'\n",
                r"unexpected character '\n' at position 8: expected &&, || or the end",
            ),
        ];
        for (text, prefix) in cases {
            let message = Selector::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.starts_with(prefix),
                "{text:?}: got {message:?}, want {prefix:?}…"
            );
        }
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| format!("{}has(a){}", "(".repeat(depth), ")".repeat(depth));
        assert!(parse(&nested(MAX_NESTING_DEPTH)).matches(&labels(&[("a", "")])));
        let error = Selector::parse(&nested(MAX_NESTING_DEPTH + 1)).err();
        assert_eq!(error.map(|e| e.position), Some(MAX_NESTING_DEPTH));
        let negated = |depth: usize| format!("{}has(a){}", "!(".repeat(depth), ")".repeat(depth));
        assert!(Selector::parse(&negated(MAX_NESTING_DEPTH)).is_ok());
        assert!(Selector::parse(&negated(MAX_NESTING_DEPTH + 1)).is_err());
        // Long flat chains and runs of `!` do not nest.
        let long_and = vec!["has(a)"; 10_000].join(" && ");
        assert!(parse(&long_and).matches(&labels(&[("a", "")])));
        let many_nots = format!("{}has(a)", "!".repeat(10_001));
        assert_eq!(parse(&many_nots), parse("!has(a)"));
        // Adversarial unbalanced input fails without recursing deeply.
        assert!(Selector::parse(&"(".repeat(100_000)).is_err());
    }

    /// Small deterministic xorshift generator, so the fuzz test needs no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }
    }

    const PIECES: &[&str] = &[
        "a",
        "b",
        "k8s.io/app",
        "x-y_z",
        "has(",
        "has(a)",
        "all(",
        "all()",
        "global(",
        "global()",
        ")",
        "(",
        "{",
        "}",
        ",",
        "'",
        "\"",
        "'v'",
        "\"w\"",
        "''",
        "==",
        "!=",
        "!",
        "&&",
        "||",
        "&",
        "|",
        "=",
        " ",
        " ",
        " ",
        "\t",
        "\n",
        "in",
        "not",
        "not in",
        "notin",
        "contains",
        "starts",
        "with",
        "starts with",
        "ends",
        "ends with",
        "é",
        "%",
        "\u{1F600}",
    ];

    #[test]
    fn parse_never_panics_and_round_trips() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let label_sets = [
            labels(&[]),
            labels(&[("a", "v"), ("b", "w")]),
            labels(&[("a", ""), ("k8s.io/app", "v"), ("x-y_z", "w")]),
        ];
        let mut valid = 0;
        for _ in 0..50_000 {
            let pieces = rng.below(16);
            let text: String = (0..pieces)
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect();
            match Selector::parse(&text) {
                Ok(selector) => {
                    valid += 1;
                    let canonical = selector.canonical();
                    let reparsed = Selector::parse(&canonical).unwrap_or_else(|e| {
                        panic!("canonical {canonical:?} of {text:?} fails: {e}")
                    });
                    assert_eq!(reparsed, selector, "{text:?}");
                    assert_eq!(reparsed.canonical(), canonical, "{text:?}");
                    for set in &label_sets {
                        for global in [false, true] {
                            let scoped = Scoped {
                                labels: set,
                                is_global: global,
                            };
                            assert_eq!(
                                selector.matches(&scoped),
                                reparsed.matches(&scoped),
                                "{text:?}"
                            );
                        }
                    }
                }
                Err(error) => {
                    assert!(error.position <= text.chars().count(), "{text:?}: {error}");
                    assert!(!error.message.is_empty(), "{text:?}");
                }
            }
        }
        // Make sure the generator exercises the valid side too.
        assert!(valid > 1_000, "only {valid} valid selectors generated");
    }

    #[test]
    fn every_prefix_of_valid_selectors_is_handled() {
        for &(text, _, _) in MATCH_CASES {
            for (end, _) in text.char_indices() {
                if let Err(error) = Selector::parse(&text[..end]) {
                    assert!(
                        error.position <= text[..end].chars().count(),
                        "{:?}: {error}",
                        &text[..end]
                    );
                }
            }
        }
    }
}
