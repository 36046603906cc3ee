//! The address map: the value of `ic_proxy.addresses` (Cloudberry's
//! `gp_interconnect_proxy_addresses`), `dbid:content:host:port[,...]`.
//!
//! This module owns parsing, validation, canonical printing and the reload
//! diff of that map. It reports every problem in a value at once, each with
//! the entry's position and text, a message and a hint, because the C proxy
//! silently drops everything after the first bad entry. It never resolves a
//! host name or touches a socket: a map is only text until the peer layer
//! resolves it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

const FORMAT_HINT: &str =
    "Write each entry as dbid:content:host:port, for example 1:-1:cdw:7000,2:0:sdw1:7002.";
const IPV6_HINT: &str = "Write an IPv6 address in brackets, e.g. 3:1:[fe80::1]:7003.";

/// gp_segment_configuration keeps dbid and content in smallint columns.
pub const MAX_DBID: u16 = 32767;
pub const MIN_CONTENT: i16 = -1;
/// DNS limits (RFC 1035): a name of at most 253 characters, not counting
/// one trailing dot, in labels of at most 63.
pub const MAX_HOST_NAME_LEN: usize = 253;
pub const MAX_HOST_LABEL_LEN: usize = 63;
/// Problem texts quote at most this many characters of an entry, a host or
/// a value, so a megabyte of bad input gives a line, not a megabyte.
pub const MAX_QUOTED_CHARS: usize = 64;

/// One instance's proxy address: an entry of the map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub dbid: u16,
    pub content: i16,
    /// A host name, a dotted IPv4 address or an IPv6 address, without brackets.
    pub host: String,
    pub port: u16,
}

impl PeerAddr {
    /// True when the host is an IPv6 address (written in brackets in the map).
    pub fn is_ipv6_literal(&self) -> bool {
        self.host.parse::<Ipv6Addr>().is_ok()
    }

    /// `host:port` or `[v6]:port`, suitable for `tokio::net::lookup_host`
    /// and `ToSocketAddrs`.
    pub fn socket_addr_string(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.dbid,
            self.content,
            bracketed(&self.host),
            self.port
        )
    }
}

/// Names and IPv4 addresses never contain ':', so a ':' means IPv6 and
/// needs brackets to stay unambiguous next to the port.
fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// A valid address map: distinct dbids, distinct host:port pairs, every
/// field in range. Entries keep the order in which they were written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMap {
    entries: Vec<PeerAddr>,
}

impl AddressMap {
    /// Parses a value of `ic_proxy.addresses`; on failure the error lists
    /// every problem, not just the first.
    pub fn parse(s: &str) -> Result<AddressMap, MapError> {
        let (entries, problems) = analyze(s);
        if problems.is_empty() {
            Ok(AddressMap { entries })
        } else {
            Err(MapError { problems })
        }
    }

    /// Every problem in `s`, in the order of the entries; empty means valid.
    pub fn check(s: &str) -> Vec<MapProblem> {
        analyze(s).1
    }

    /// Builds a map from entries with the same validation as [`parse`]
    /// (ranges, hosts, duplicates); positions are 1-based indices into `v`.
    ///
    /// [`parse`]: AddressMap::parse
    pub fn from_entries(v: Vec<PeerAddr>) -> Result<AddressMap, MapError> {
        let mut problems = Vec::new();
        let mut seen = Seen::default();
        for (index, peer) in v.iter().enumerate() {
            let position = index + 1;
            let mut kinds = validate_peer(peer);
            if kinds.is_empty() {
                kinds = seen.admit(position, peer);
            }
            problems.extend(kinds.into_iter().map(|kind| MapProblem {
                position,
                entry: peer.to_string(),
                kind,
            }));
        }
        if problems.is_empty() {
            Ok(AddressMap { entries: v })
        } else {
            Err(MapError { problems })
        }
    }

    pub fn entries(&self) -> &[PeerAddr] {
        &self.entries
    }

    /// The entry for `dbid`. A linear scan: maps hold one entry per
    /// instance and are looked up on reload, not per packet.
    pub fn get(&self, dbid: u16) -> Option<&PeerAddr> {
        self.entries.iter().find(|peer| peer.dbid == dbid)
    }

    /// The entries instance `me` exchanges traffic with: every other one
    /// except those of its own content (its mirror, or the coordinator's
    /// standby). Empty when `me` is not in the map.
    pub fn linked_to(&self, me: u16) -> Vec<PeerAddr> {
        let Some(mine) = self.get(me) else {
            return Vec::new();
        };
        self.entries
            .iter()
            .filter(|e| e.dbid != me && e.content != mine.content)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What a reload must do to go from `old` to `new`, keyed by dbid; every
    /// list is sorted by dbid. Order and spacing of the text do not matter.
    pub fn diff(old: &AddressMap, new: &AddressMap) -> MapDiff {
        let old_by_dbid: BTreeMap<u16, &PeerAddr> =
            old.entries.iter().map(|peer| (peer.dbid, peer)).collect();
        let new_by_dbid: BTreeMap<u16, &PeerAddr> =
            new.entries.iter().map(|peer| (peer.dbid, peer)).collect();
        let mut diff = MapDiff::default();
        for (dbid, &before) in &old_by_dbid {
            match new_by_dbid.get(dbid) {
                None => diff.removed.push(before.clone()),
                Some(&after) if after != before => {
                    diff.changed.push((before.clone(), after.clone()))
                }
                Some(_) => {}
            }
        }
        for (dbid, &after) in &new_by_dbid {
            if !old_by_dbid.contains_key(dbid) {
                diff.added.push(after.clone());
            }
        }
        diff
    }
}

/// The canonical form: entries joined by ',' without spaces.
impl fmt::Display for AddressMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, peer) in self.entries.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{peer}")?;
        }
        Ok(())
    }
}

impl FromStr for AddressMap {
    type Err = MapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AddressMap::parse(s)
    }
}

/// The difference between two maps, for a reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub added: Vec<PeerAddr>,
    pub removed: Vec<PeerAddr>,
    /// `(old, new)`: same dbid, another content, host or port.
    pub changed: Vec<(PeerAddr, PeerAddr)>,
}

impl MapDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// One problem in an address map value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapProblem {
    /// 1-based entry index; 0 means the whole value.
    pub position: usize,
    /// The entry as written, without surrounding whitespace (the whole
    /// value when `position` is 0). Kept whole; [`MapProblem::message`]
    /// quotes at most [`MAX_QUOTED_CHARS`] characters of it.
    pub entry: String,
    pub kind: ProblemKind,
}

/// A numeric field of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NumberField {
    Dbid,
    Content,
    Port,
}

impl fmt::Display for NumberField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberField::Dbid => "dbid",
            NumberField::Content => "content",
            NumberField::Port => "port",
        })
    }
}

/// What is wrong. Out-of-range values keep the digits as written, so a
/// number too large for any integer type is still reported faithfully.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The whole value is wrapped in '...' or "..." (position 0).
    Quoted,
    /// Nothing between two commas, or a value that is only a comma.
    EmptyEntry,
    /// Not four ':'-separated fields (':' inside brackets do not count).
    FieldCount {
        found: usize,
    },
    /// A '[' without its ']'.
    UnclosedBracket,
    /// Not an optional '-' followed by decimal digits (empty text = the
    /// field is missing).
    NotANumber {
        field: NumberField,
        text: String,
    },
    DbidOutOfRange {
        value: String,
    },
    ContentOutOfRange {
        value: String,
    },
    PortOutOfRange {
        value: String,
    },
    EmptyHost,
    /// A character other than letters, digits, '-', '.', '_'.
    BadHost {
        host: String,
    },
    /// A host name longer than [`MAX_HOST_NAME_LEN`] (one trailing dot
    /// not counted); `length` is in characters.
    HostNameTooLong {
        host: String,
        length: usize,
    },
    /// A dot-separated label of a host name longer than
    /// [`MAX_HOST_LABEL_LEN`]; `label` is the first such label.
    HostLabelTooLong {
        host: String,
        label: String,
    },
    /// Only digits and dots, but not a dotted-quad IPv4 address.
    BadIpv4 {
        host: String,
    },
    /// In brackets but not an IPv6 address; `host` is the text inside.
    BadIpv6 {
        host: String,
    },
    /// An IPv6 address written without brackets.
    UnbracketedIpv6 {
        host: String,
    },
    DuplicateDbid {
        dbid: u16,
        first_position: usize,
    },
    /// Same host (names compared case-insensitively and without a trailing
    /// dot, IPv6 by value) and port.
    DuplicateHostPort {
        host: String,
        port: u16,
        first_position: usize,
    },
}

impl ProblemKind {
    fn detail(&self) -> String {
        match self {
            ProblemKind::Quoted => "the value is wrapped in quotes".to_string(),
            ProblemKind::EmptyEntry => "the entry is empty".to_string(),
            ProblemKind::FieldCount { found } => format!(
                "expected dbid:content:host:port, found {found} field{}",
                if *found == 1 { "" } else { "s" }
            ),
            ProblemKind::UnclosedBracket => "'[' is not closed by ']'".to_string(),
            ProblemKind::NotANumber { field, text } if text.is_empty() => {
                format!("{field} is empty")
            }
            ProblemKind::NotANumber { field, text } => {
                format!("{field} {:?} is not a number", clip(text))
            }
            ProblemKind::DbidOutOfRange { value } => {
                format!("dbid {} is outside 1..{MAX_DBID}", clip(value))
            }
            ProblemKind::ContentOutOfRange { value } => {
                format!(
                    "content {} is outside {MIN_CONTENT}..{}",
                    clip(value),
                    i16::MAX
                )
            }
            ProblemKind::PortOutOfRange { value } => {
                format!("port {} is outside 1..65535", clip(value))
            }
            ProblemKind::EmptyHost => "host is empty".to_string(),
            ProblemKind::BadHost { host } => match host.chars().find(|&c| !is_host_name_char(c)) {
                Some(c) => format!(
                    "host {:?} is not a valid host name: {c:?} is not allowed",
                    clip(host)
                ),
                None => format!("host {:?} is not a valid host name", clip(host)),
            },
            ProblemKind::HostNameTooLong { host, length } => format!(
                "host {:?} is not a valid host name: {length} characters, \
                 at most {MAX_HOST_NAME_LEN} are allowed",
                clip(host)
            ),
            ProblemKind::HostLabelTooLong { host, label } => format!(
                "host {:?} is not a valid host name: label {:?} has {} characters, \
                 at most {MAX_HOST_LABEL_LEN} are allowed",
                clip(host),
                clip(label),
                label.chars().count()
            ),
            ProblemKind::BadIpv4 { host } => {
                format!("host {:?} is not a valid IPv4 address", clip(host))
            }
            ProblemKind::BadIpv6 { host } => {
                format!(
                    "host {:?} is not a valid IPv6 address",
                    clip(&format!("[{host}]"))
                )
            }
            ProblemKind::UnbracketedIpv6 { host } => {
                format!("IPv6 address {:?} must be written in brackets", clip(host))
            }
            ProblemKind::DuplicateDbid {
                dbid,
                first_position,
            } => format!("dbid {dbid} appears twice (first in entry {first_position})"),
            ProblemKind::DuplicateHostPort {
                host,
                port,
                first_position,
            } => format!(
                "{}:{port} appears twice (first in entry {first_position})",
                clip(&bracketed(host))
            ),
        }
    }

    fn hint(&self) -> String {
        let hint = match self {
            ProblemKind::Quoted => {
                "Remove the quotes: they belong to the shell or gpconfig, not to the value."
            }
            ProblemKind::EmptyEntry => {
                "Remove the extra comma: separate entries with a single ','."
            }
            ProblemKind::FieldCount { .. } => FORMAT_HINT,
            ProblemKind::UnclosedBracket => {
                "Close the IPv6 address with ']', e.g. 3:1:[fe80::1]:7003."
            }
            ProblemKind::NotANumber {
                field: NumberField::Content,
                ..
            } => {
                "Write the content in decimal digits with an optional leading '-', \
                  e.g. -1 for the coordinator; no '+' and no spaces."
            }
            ProblemKind::NotANumber {
                field: NumberField::Dbid,
                ..
            } => "Write the dbid in decimal digits, without '+' or spaces, e.g. 2:0:sdw1:7002.",
            ProblemKind::NotANumber {
                field: NumberField::Port,
                ..
            } => "Write the port in decimal digits, without '+' or spaces, e.g. 2:0:sdw1:7002.",
            ProblemKind::DbidOutOfRange { .. } => {
                "Take the dbid from gp_segment_configuration; dbids run from 1 to 32767."
            }
            ProblemKind::ContentOutOfRange { .. } => {
                "Take the content from gp_segment_configuration: -1 for the coordinator \
                 and standby, 0 and up for segments."
            }
            ProblemKind::PortOutOfRange { .. } => {
                "Use a TCP port from 1 to 65535 for the proxy, usually the instance's \
                 port plus a fixed offset."
            }
            ProblemKind::EmptyHost => {
                "Give the instance's host name or address, e.g. 2:0:sdw1:7002."
            }
            ProblemKind::BadHost { .. } => {
                "Write the host as a name of letters, digits, '-', '.' and '_', a dotted \
                 IPv4 address, or an IPv6 address in brackets such as [fe80::1]."
            }
            ProblemKind::HostNameTooLong { .. } => {
                "Use a host name of at most 253 characters, or the instance's IP address."
            }
            ProblemKind::HostLabelTooLong { .. } => {
                "Keep each dot-separated part of a host name to at most 63 characters, \
                 or use the instance's IP address."
            }
            ProblemKind::BadIpv4 { .. } => {
                "Write an IPv4 address as four numbers 0..255 separated by dots, e.g. 10.0.0.5."
            }
            ProblemKind::BadIpv6 { .. } => {
                "Put only an IPv6 address in brackets, e.g. 3:1:[fe80::1]:7003; \
                 zone ids such as %eth0 are not supported."
            }
            ProblemKind::UnbracketedIpv6 { .. } => IPV6_HINT,
            ProblemKind::DuplicateDbid { .. } => {
                "Each instance needs its own dbid; take dbid from gp_segment_configuration."
            }
            ProblemKind::DuplicateHostPort { .. } => {
                "Give every instance a distinct proxy port on a host."
            }
        };
        hint.to_string()
    }
}

impl MapProblem {
    /// The user-facing message, naming the entry and the bad value.
    pub fn message(&self) -> String {
        match self.kind {
            ProblemKind::Quoted => self.kind.detail(),
            ProblemKind::EmptyEntry => format!("entry {} is empty", self.position),
            _ => format!(
                "entry {} {:?}: {}",
                self.position,
                clip(&self.entry),
                self.kind.detail()
            ),
        }
    }

    /// How to fix it.
    pub fn hint(&self) -> String {
        self.kind.hint()
    }
}

impl fmt::Display for MapProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// An invalid address map: every problem found, in entry order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", summarize(.problems))]
pub struct MapError {
    /// Never empty when built by this module.
    pub problems: Vec<MapProblem>,
}

/// Problems listed one per line in an error's detail, at most: a value
/// of a million empty entries must not make a million-line message.
pub const MAX_DETAIL_PROBLEMS: usize = 20;

impl MapError {
    /// Every problem, one per line, for an error's detail (at most
    /// [`MAX_DETAIL_PROBLEMS`], then how many more); None for a single one
    /// (the message says it).
    pub fn detail(&self) -> Option<String> {
        if self.problems.len() < 2 {
            return None;
        }
        let mut lines: Vec<String> = self
            .problems
            .iter()
            .take(MAX_DETAIL_PROBLEMS)
            .map(MapProblem::message)
            .collect();
        let rest = self.problems.len().saturating_sub(MAX_DETAIL_PROBLEMS);
        if rest > 0 {
            lines.push(format!(
                "... and {rest} more problem{}",
                if rest == 1 { "" } else { "s" }
            ));
        }
        Some(lines.join("\n"))
    }

    /// The first problem's hint.
    pub fn hint(&self) -> String {
        self.problems
            .first()
            .map(MapProblem::hint)
            .unwrap_or_default()
    }
}

fn summarize(problems: &[MapProblem]) -> String {
    match problems {
        [] => "the address map is invalid".to_string(),
        [only] => only.message(),
        [first, rest @ ..] => format!(
            "{} (and {} more problem{})",
            first.message(),
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// `text` as quoted in a problem: whole up to [`MAX_QUOTED_CHARS`]
/// characters, else its first ones and "..." within that many.
fn clip(text: &str) -> Cow<'_, str> {
    // Stops after MAX_QUOTED_CHARS + 1 characters, however long `text` is.
    if text.char_indices().nth(MAX_QUOTED_CHARS).is_none() {
        return Cow::Borrowed(text);
    }
    let keep = MAX_QUOTED_CHARS - "...".len();
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    Cow::Owned(format!("{}...", &text[..end]))
}

/// Parses `s` into its valid entries and every problem found.
fn analyze(s: &str) -> (Vec<PeerAddr>, Vec<MapProblem>) {
    let mut problems = Vec::new();
    let trimmed = s.trim();
    let body = match trimmed.as_bytes() {
        [open @ (b'\'' | b'"'), .., close] if open == close => {
            problems.push(MapProblem {
                position: 0,
                entry: trimmed.to_string(),
                kind: ProblemKind::Quoted,
            });
            // Still check what is inside, so one round trip shows everything.
            &trimmed[1..trimmed.len() - 1]
        }
        _ => trimmed,
    };

    let mut entries = Vec::new();
    if body.trim().is_empty() {
        return (entries, problems);
    }
    let mut segments: Vec<&str> = body.split(',').map(str::trim).collect();
    // One trailing comma is accepted, as the C parser does.
    if segments.len() > 1 && segments.last().is_some_and(|last| last.is_empty()) {
        segments.pop();
    }

    let mut seen = Seen::default();
    for (index, text) in segments.into_iter().enumerate() {
        let position = index + 1;
        let kinds = if text.is_empty() {
            vec![ProblemKind::EmptyEntry]
        } else {
            match parse_entry(text) {
                Ok(peer) => {
                    let kinds = seen.admit(position, &peer);
                    if kinds.is_empty() {
                        entries.push(peer);
                    }
                    kinds
                }
                Err(kinds) => kinds,
            }
        };
        problems.extend(kinds.into_iter().map(|kind| MapProblem {
            position,
            entry: text.to_string(),
            kind,
        }));
    }
    (entries, problems)
}

/// Splits an entry at ':' outside brackets; `None` if a '[' is left open.
fn split_fields(text: &str) -> Option<Vec<&str>> {
    let mut fields = Vec::with_capacity(4);
    let mut start = 0;
    let mut in_brackets = false;
    for (i, c) in text.char_indices() {
        match c {
            '[' if !in_brackets => in_brackets = true,
            ']' if in_brackets => in_brackets = false,
            ':' if !in_brackets => {
                fields.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_brackets {
        return None;
    }
    fields.push(&text[start..]);
    Some(fields)
}

/// Parses one non-empty entry, collecting every field's problem.
fn parse_entry(text: &str) -> Result<PeerAddr, Vec<ProblemKind>> {
    let fields = split_fields(text).ok_or_else(|| vec![ProblemKind::UnclosedBracket])?;
    match fields[..] {
        [dbid, content, host, port] => {
            let dbid = parse_dbid(dbid);
            let content = parse_content(content);
            let host = parse_host_field(host);
            let port = parse_port(port);
            match (dbid, content, host, port) {
                (Ok(dbid), Ok(content), Ok(host), Ok(port)) => Ok(PeerAddr {
                    dbid,
                    content,
                    host,
                    port,
                }),
                (dbid, content, host, port) => {
                    Err([dbid.err(), content.err(), host.err(), port.err()]
                        .into_iter()
                        .flatten()
                        .collect())
                }
            }
        }
        [dbid, content, ref middle @ .., port] if middle.join(":").parse::<Ipv6Addr>().is_ok() => {
            // The shape is clear, so the other fields are still worth checking.
            Err([
                parse_dbid(dbid).err(),
                parse_content(content).err(),
                Some(ProblemKind::UnbracketedIpv6 {
                    host: middle.join(":"),
                }),
                parse_port(port).err(),
            ]
            .into_iter()
            .flatten()
            .collect())
        }
        _ => Err(vec![ProblemKind::FieldCount {
            found: fields.len(),
        }]),
    }
}

/// An optional '-' then decimal digits. `Ok(None)` = well formed but too
/// large for i64, which is out of range for every field anyway.
fn parse_integer(field: NumberField, text: &str) -> Result<Option<i64>, ProblemKind> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProblemKind::NotANumber {
            field,
            text: text.to_string(),
        });
    }
    Ok(text.parse::<i64>().ok())
}

fn parse_dbid(text: &str) -> Result<u16, ProblemKind> {
    parse_integer(NumberField::Dbid, text)?
        .filter(|v| (1..=i64::from(MAX_DBID)).contains(v))
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| ProblemKind::DbidOutOfRange {
            value: text.to_string(),
        })
}

fn parse_content(text: &str) -> Result<i16, ProblemKind> {
    parse_integer(NumberField::Content, text)?
        .filter(|v| (i64::from(MIN_CONTENT)..=i64::from(i16::MAX)).contains(v))
        .and_then(|v| i16::try_from(v).ok())
        .ok_or_else(|| ProblemKind::ContentOutOfRange {
            value: text.to_string(),
        })
}

fn parse_port(text: &str) -> Result<u16, ProblemKind> {
    parse_integer(NumberField::Port, text)?
        .filter(|v| (1..=65535).contains(v))
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| ProblemKind::PortOutOfRange {
            value: text.to_string(),
        })
}

/// The host field as written: `[v6]`, a dotted IPv4 address or a name.
/// Returns the host without brackets.
fn parse_host_field(text: &str) -> Result<String, ProblemKind> {
    if let Some(inner) = text.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(inner.to_string()),
            Err(_) => Err(ProblemKind::BadIpv6 {
                host: inner.to_string(),
            }),
        };
    }
    check_unbracketed_host(text).map(|()| text.to_string())
}

/// A name or a dotted IPv4 address.
fn check_unbracketed_host(host: &str) -> Result<(), ProblemKind> {
    if host.is_empty() {
        return Err(ProblemKind::EmptyHost);
    }
    // Top-level DNS labels are never all digits, so digits and dots mean IPv4.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(ProblemKind::BadIpv4 {
                host: host.to_string(),
            }),
        };
    }
    if !host.chars().all(is_host_name_char) {
        return Err(ProblemKind::BadHost {
            host: host.to_string(),
        });
    }
    // Only ASCII from here on, so bytes are characters. A label is reported
    // before the total, as the more precise of the two when both apply.
    let name = host.strip_suffix('.').unwrap_or(host);
    if let Some(label) = name.split('.').find(|l| l.len() > MAX_HOST_LABEL_LEN) {
        return Err(ProblemKind::HostLabelTooLong {
            host: host.to_string(),
            label: label.to_string(),
        });
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(ProblemKind::HostNameTooLong {
            host: host.to_string(),
            length: name.len(),
        });
    }
    Ok(())
}

fn is_host_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

/// Range and host checks for an entry built in code (`from_entries`).
fn validate_peer(peer: &PeerAddr) -> Vec<ProblemKind> {
    let mut problems = Vec::new();
    if peer.dbid == 0 || peer.dbid > MAX_DBID {
        problems.push(ProblemKind::DbidOutOfRange {
            value: peer.dbid.to_string(),
        });
    }
    if peer.content < MIN_CONTENT {
        problems.push(ProblemKind::ContentOutOfRange {
            value: peer.content.to_string(),
        });
    }
    let host = &peer.host;
    let host_check = if host.contains(['[', ']']) {
        Err(ProblemKind::BadHost { host: host.clone() })
    } else if host.contains(':') {
        host.parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| ProblemKind::BadIpv6 { host: host.clone() })
    } else {
        check_unbracketed_host(host)
    };
    if let Err(problem) = host_check {
        problems.push(problem);
    }
    if peer.port == 0 {
        problems.push(ProblemKind::PortOutOfRange {
            value: peer.port.to_string(),
        });
    }
    problems
}

/// First positions of dbids and host:port pairs, for duplicate detection.
#[derive(Default)]
struct Seen {
    dbids: HashMap<u16, usize>,
    endpoints: HashMap<(String, u16), usize>,
}

impl Seen {
    /// Records a valid entry; returns its duplicate problems (the first
    /// occurrence stays the reference).
    fn admit(&mut self, position: usize, peer: &PeerAddr) -> Vec<ProblemKind> {
        let mut problems = Vec::new();
        match self.dbids.get(&peer.dbid) {
            Some(&first_position) => problems.push(ProblemKind::DuplicateDbid {
                dbid: peer.dbid,
                first_position,
            }),
            None => {
                self.dbids.insert(peer.dbid, position);
            }
        }
        let key = (host_key(&peer.host), peer.port);
        match self.endpoints.get(&key) {
            Some(&first_position) => problems.push(ProblemKind::DuplicateHostPort {
                host: peer.host.clone(),
                port: peer.port,
                first_position,
            }),
            None => {
                self.endpoints.insert(key, position);
            }
        }
        problems
    }
}

/// Names compare case-insensitively and without their trailing dot
/// (`SDW1`, `sdw1.` and `sdw1` are one host); IPv6 by value (`::1` = `0::1`).
fn host_key(host: &str) -> String {
    match host.parse::<Ipv6Addr>() {
        Ok(v6) => v6.to_string(),
        Err(_) => host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, ToSocketAddrs};

    fn peer(dbid: u16, content: i16, host: &str, port: u16) -> PeerAddr {
        PeerAddr {
            dbid,
            content,
            host: host.to_string(),
            port,
        }
    }

    /// (position, message) of every problem in `s`.
    fn messages(s: &str) -> Vec<(usize, String)> {
        AddressMap::check(s)
            .iter()
            .map(|p| (p.position, p.message()))
            .collect()
    }

    /// The only problem in `s`.
    fn only_problem(s: &str) -> MapProblem {
        let problems = AddressMap::check(s);
        assert_eq!(problems.len(), 1, "{s:?} gave {problems:?}");
        problems.into_iter().next().unwrap()
    }

    fn assert_one(s: &str, position: usize, message: &str, kind: ProblemKind) {
        let problem = only_problem(s);
        assert_eq!(problem.position, position, "{s:?}");
        assert_eq!(problem.message(), message, "{s:?}");
        assert_eq!(problem.to_string(), message, "Display = message");
        assert_eq!(problem.kind, kind, "{s:?}");
    }

    // ---- one test per problem kind: exact message, position, hint ----

    #[test]
    fn quoted_value() {
        for s in ["'1:-1:cdw:7000,2:0:sdw1:7002'", "\"1:-1:cdw:7000\"", " '' "] {
            let problem = only_problem(s);
            assert_eq!(problem.position, 0);
            assert_eq!(problem.entry, s.trim());
            assert_eq!(problem.kind, ProblemKind::Quoted);
            assert_eq!(problem.message(), "the value is wrapped in quotes");
            assert_eq!(
                problem.hint(),
                "Remove the quotes: they belong to the shell or gpconfig, not to the value."
            );
        }
        // Mismatched quotes are not a wrapping: the entries themselves are bad.
        assert_eq!(
            messages("'1:-1:cdw:7000\""),
            vec![
                (
                    1,
                    r#"entry 1 "'1:-1:cdw:7000\"": dbid "'1" is not a number"#.to_string()
                ),
                (
                    1,
                    r#"entry 1 "'1:-1:cdw:7000\"": port "7000\"" is not a number"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn quoted_value_also_reports_problems_inside() {
        assert_eq!(
            messages("'1:-1:cdw:7000,2:0:sdw1:99999'"),
            vec![
                (0, "the value is wrapped in quotes".to_string()),
                (
                    2,
                    r#"entry 2 "2:0:sdw1:99999": port 99999 is outside 1..65535"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn empty_entry() {
        assert_one(
            "1:-1:cdw:7000,,2:0:sdw1:7002",
            2,
            "entry 2 is empty",
            ProblemKind::EmptyEntry,
        );
        assert_one(",", 1, "entry 1 is empty", ProblemKind::EmptyEntry);
        assert_one(" , ", 1, "entry 1 is empty", ProblemKind::EmptyEntry);
        assert_one(
            ",1:-1:cdw:7000",
            1,
            "entry 1 is empty",
            ProblemKind::EmptyEntry,
        );
        // Only one trailing comma is forgiven.
        assert_one(
            "1:-1:cdw:7000,,",
            2,
            "entry 2 is empty",
            ProblemKind::EmptyEntry,
        );
        assert_eq!(
            only_problem(",").hint(),
            "Remove the extra comma: separate entries with a single ','."
        );
    }

    #[test]
    fn wrong_field_count() {
        assert_one(
            "1:-1:cdw:7000,2:0:sdw1",
            2,
            r#"entry 2 "2:0:sdw1": expected dbid:content:host:port, found 3 fields"#,
            ProblemKind::FieldCount { found: 3 },
        );
        assert_one(
            "cdw",
            1,
            r#"entry 1 "cdw": expected dbid:content:host:port, found 1 field"#,
            ProblemKind::FieldCount { found: 1 },
        );
        // A missing comma glues two entries together.
        assert_one(
            "1:-1:cdw:7000 2:0:sdw1:7002",
            1,
            r#"entry 1 "1:-1:cdw:7000 2:0:sdw1:7002": expected dbid:content:host:port, found 7 fields"#,
            ProblemKind::FieldCount { found: 7 },
        );
        assert_eq!(
            only_problem("cdw").hint(),
            "Write each entry as dbid:content:host:port, for example 1:-1:cdw:7000,2:0:sdw1:7002."
        );
    }

    #[test]
    fn not_a_number() {
        assert_one(
            "1:-1:host:70x",
            1,
            r#"entry 1 "1:-1:host:70x": port "70x" is not a number"#,
            ProblemKind::NotANumber {
                field: NumberField::Port,
                text: "70x".to_string(),
            },
        );
        assert_one(
            "+1:-1:cdw:7000",
            1,
            r#"entry 1 "+1:-1:cdw:7000": dbid "+1" is not a number"#,
            ProblemKind::NotANumber {
                field: NumberField::Dbid,
                text: "+1".to_string(),
            },
        );
        // Spaces inside an entry are not skipped, unlike the C scanf loop.
        assert_one(
            "1: -1:cdw:7000",
            1,
            r#"entry 1 "1: -1:cdw:7000": content " -1" is not a number"#,
            ProblemKind::NotANumber {
                field: NumberField::Content,
                text: " -1".to_string(),
            },
        );
        assert_one(
            "1:--1:cdw:7000",
            1,
            r#"entry 1 "1:--1:cdw:7000": content "--1" is not a number"#,
            ProblemKind::NotANumber {
                field: NumberField::Content,
                text: "--1".to_string(),
            },
        );
        assert_one(
            "1:-:cdw:7000",
            1,
            r#"entry 1 "1:-:cdw:7000": content "-" is not a number"#,
            ProblemKind::NotANumber {
                field: NumberField::Content,
                text: "-".to_string(),
            },
        );
        assert_one(
            ":-1:cdw:7000",
            1,
            r#"entry 1 ":-1:cdw:7000": dbid is empty"#,
            ProblemKind::NotANumber {
                field: NumberField::Dbid,
                text: String::new(),
            },
        );
        assert_eq!(
            only_problem("1:-1:host:70x").hint(),
            "Write the port in decimal digits, without '+' or spaces, e.g. 2:0:sdw1:7002."
        );
        assert_eq!(
            only_problem("1:x:host:7000").hint(),
            "Write the content in decimal digits with an optional leading '-', \
             e.g. -1 for the coordinator; no '+' and no spaces."
        );
        assert_eq!(
            only_problem("x:-1:host:7000").hint(),
            "Write the dbid in decimal digits, without '+' or spaces, e.g. 2:0:sdw1:7002."
        );
    }

    #[test]
    fn dbid_out_of_range() {
        // gp_segment_configuration.dbid is a smallint: 32768 and up would
        // show as negative numbers in SQL.
        for (dbid, s) in [
            ("0", "0:-1:cdw:7000"),
            ("32768", "32768:-1:cdw:7000"),
            ("40000", "40000:-1:cdw:7000"),
            ("65535", "65535:-1:cdw:7000"),
            ("65536", "65536:-1:cdw:7000"),
            ("-1", "-1:-1:cdw:7000"),
            (
                "99999999999999999999999",
                "99999999999999999999999:-1:cdw:7000",
            ),
        ] {
            assert_one(
                s,
                1,
                &format!("entry 1 {s:?}: dbid {dbid} is outside 1..32767"),
                ProblemKind::DbidOutOfRange {
                    value: dbid.to_string(),
                },
            );
        }
        assert_eq!(
            only_problem("40000:-1:cdw:7000").message(),
            r#"entry 1 "40000:-1:cdw:7000": dbid 40000 is outside 1..32767"#
        );
        assert_eq!(
            only_problem("0:-1:cdw:7000").hint(),
            "Take the dbid from gp_segment_configuration; dbids run from 1 to 32767."
        );
        assert!(AddressMap::check("32767:-1:cdw:7000").is_empty());
        assert!(AddressMap::check("1:-1:cdw:7000").is_empty());
    }

    #[test]
    fn from_entries_refuses_dbids_beyond_smallint() {
        let err = AddressMap::from_entries(vec![
            peer(32767, 0, "sdw1", 7002),
            peer(32768, 0, "sdw1", 7003),
            peer(65535, 0, "sdw1", 7004),
        ])
        .unwrap_err();
        let got: Vec<String> = err.problems.iter().map(MapProblem::message).collect();
        assert_eq!(
            got,
            [
                r#"entry 2 "32768:0:sdw1:7003": dbid 32768 is outside 1..32767"#,
                r#"entry 3 "65535:0:sdw1:7004": dbid 65535 is outside 1..32767"#,
            ]
        );
    }

    #[test]
    fn content_out_of_range() {
        for (content, s) in [
            ("-2", "1:-2:cdw:7000"),
            ("32768", "1:32768:cdw:7000"),
            ("-32769", "1:-32769:cdw:7000"),
            ("65535", "1:65535:cdw:7000"),
        ] {
            assert_one(
                s,
                1,
                &format!("entry 1 {s:?}: content {content} is outside -1..32767"),
                ProblemKind::ContentOutOfRange {
                    value: content.to_string(),
                },
            );
        }
        assert_eq!(
            only_problem("1:-2:cdw:7000").hint(),
            "Take the content from gp_segment_configuration: -1 for the coordinator \
             and standby, 0 and up for segments."
        );
        assert!(AddressMap::check("1:32767:cdw:7000").is_empty());
        assert!(AddressMap::check("1:-1:cdw:7000").is_empty());
    }

    #[test]
    fn port_out_of_range() {
        assert_one(
            "1:-1:cdw:7000,2:0:sdw1:99999",
            2,
            r#"entry 2 "2:0:sdw1:99999": port 99999 is outside 1..65535"#,
            ProblemKind::PortOutOfRange {
                value: "99999".to_string(),
            },
        );
        assert_one(
            "1:-1:cdw:0",
            1,
            r#"entry 1 "1:-1:cdw:0": port 0 is outside 1..65535"#,
            ProblemKind::PortOutOfRange {
                value: "0".to_string(),
            },
        );
        assert_eq!(
            only_problem("1:-1:cdw:0").hint(),
            "Use a TCP port from 1 to 65535 for the proxy, usually the instance's \
             port plus a fixed offset."
        );
    }

    #[test]
    fn empty_host() {
        assert_one(
            "1:-1::7000",
            1,
            r#"entry 1 "1:-1::7000": host is empty"#,
            ProblemKind::EmptyHost,
        );
        assert_eq!(
            only_problem("1:-1::7000").hint(),
            "Give the instance's host name or address, e.g. 2:0:sdw1:7002."
        );
    }

    #[test]
    fn bad_host() {
        assert_one(
            "1:-1:c dw:7000",
            1,
            r#"entry 1 "1:-1:c dw:7000": host "c dw" is not a valid host name: ' ' is not allowed"#,
            ProblemKind::BadHost {
                host: "c dw".to_string(),
            },
        );
        assert_one(
            "1:-1:sdw1/24:7000",
            1,
            r#"entry 1 "1:-1:sdw1/24:7000": host "sdw1/24" is not a valid host name: '/' is not allowed"#,
            ProblemKind::BadHost {
                host: "sdw1/24".to_string(),
            },
        );
        assert_eq!(
            only_problem("1:-1:c dw:7000").hint(),
            "Write the host as a name of letters, digits, '-', '.' and '_', a dotted \
             IPv4 address, or an IPv6 address in brackets such as [fe80::1]."
        );
    }

    #[test]
    fn host_name_of_253_characters_is_the_longest() {
        // Four labels of 63 characters joined by dots: 255 characters.
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        let at_limit = &long[..253];
        assert!(AddressMap::check(&format!("1:-1:{at_limit}:7000")).is_empty());
        // One trailing dot is not counted.
        assert!(AddressMap::check(&format!("1:-1:{at_limit}.:7000")).is_empty());

        let too_long = &long[..254];
        let s = format!("1:-1:{too_long}:7000");
        let quoted_entry = format!("1:-1:{}...", &label[..56]);
        let quoted_host = format!("{}...", &label[..61]);
        assert_one(
            &s,
            1,
            &format!(
                "entry 1 {quoted_entry:?}: host {quoted_host:?} is not a valid host name: \
                 254 characters, at most 253 are allowed"
            ),
            ProblemKind::HostNameTooLong {
                host: too_long.to_string(),
                length: 254,
            },
        );
        assert_eq!(
            only_problem(&s).hint(),
            "Use a host name of at most 253 characters, or the instance's IP address."
        );
    }

    #[test]
    fn host_label_of_63_characters_is_the_longest() {
        let label63 = "b".repeat(63);
        assert!(AddressMap::check(&format!("1:-1:{label63}.example.com:7000")).is_empty());

        let host = format!("sdw1.{}.example.com", "b".repeat(64));
        let s = format!("1:-1:{host}:7000");
        assert_one(
            &s,
            1,
            &format!(
                "entry 1 \"1:-1:sdw1.{}...\": host \"sdw1.{}...\" is not a valid host name: \
                 label \"{}\" has 64 characters, at most 63 are allowed",
                "b".repeat(51),
                "b".repeat(56),
                "b".repeat(64),
            ),
            ProblemKind::HostLabelTooLong {
                host: host.clone(),
                label: "b".repeat(64),
            },
        );
        assert_eq!(
            only_problem(&s).hint(),
            "Keep each dot-separated part of a host name to at most 63 characters, \
             or use the instance's IP address."
        );

        // A 300-character label is also more than 253 in all: the label is
        // named, being the more precise problem.
        let s = format!("1:-1:{}:7000", "c".repeat(300));
        assert_eq!(
            only_problem(&s).message(),
            format!(
                "entry 1 \"1:-1:{c56}...\": host \"{c61}...\" is not a valid host name: \
                 label \"{c61}...\" has 300 characters, at most 63 are allowed",
                c56 = "c".repeat(56),
                c61 = "c".repeat(61),
            )
        );
        // The last label counts too, and a trailing dot is no empty label.
        let s = format!("1:-1:sdw1.{}.:7000", "d".repeat(64));
        assert!(matches!(
            only_problem(&s).kind,
            ProblemKind::HostLabelTooLong { ref label, .. } if label.len() == 64
        ));
    }

    #[test]
    fn length_limits_do_not_apply_to_addresses() {
        // Bracketed IPv6 is not a host name; IPv4 is never that long anyway.
        assert!(AddressMap::check(
            "1:-1:[0000:0000:0000:0000:0000:ffff:255.255.255.255]:7000,2:0:10.0.0.5:7000"
        )
        .is_empty());
        // Characters are checked before lengths.
        let s = format!("1:-1:{} x:7000", "e".repeat(300));
        assert!(matches!(only_problem(&s).kind, ProblemKind::BadHost { .. }));
    }

    #[test]
    fn from_entries_checks_host_lengths() {
        let err = AddressMap::from_entries(vec![
            peer(1, -1, &"f".repeat(64), 7000),
            peer(2, 0, &vec!["g".repeat(50); 6].join("."), 7002),
        ])
        .unwrap_err();
        let kinds: Vec<&ProblemKind> = err.problems.iter().map(|p| &p.kind).collect();
        assert!(
            matches!(
                kinds[..],
                [
                    ProblemKind::HostLabelTooLong { .. },
                    ProblemKind::HostNameTooLong { length: 305, .. }
                ]
            ),
            "{kinds:?}"
        );
    }

    #[test]
    fn long_text_is_quoted_to_64_characters() {
        assert_eq!(clip(""), "");
        let exact = "h".repeat(64);
        assert_eq!(clip(&exact), exact);
        let over = "h".repeat(65);
        assert_eq!(clip(&over), format!("{}...", "h".repeat(61)));
        assert_eq!(clip(&over).chars().count(), 64);
        // Characters, not bytes: never cut inside a UTF-8 sequence.
        let wide = "é".repeat(100);
        assert_eq!(clip(&wide), format!("{}...", "é".repeat(61)));

        // A megabyte of bad entry gives a short message, every quote clipped,
        // while the problem keeps the entry whole.
        let garbage = "x".repeat(1 << 20);
        let s = format!("1:{garbage}:{garbage} {garbage}:{garbage}");
        let problems = AddressMap::check(&s);
        let x59 = "x".repeat(59);
        let x61 = "x".repeat(61);
        let got: Vec<String> = problems.iter().map(MapProblem::message).collect();
        assert_eq!(
            got,
            [
                format!(r#"entry 1 "1:{x59}...": content "{x61}..." is not a number"#),
                format!(
                    r#"entry 1 "1:{x59}...": host "{x61}..." is not a valid host name: ' ' is not allowed"#
                ),
                format!(r#"entry 1 "1:{x59}...": port "{x61}..." is not a number"#),
            ]
        );
        assert!(problems.iter().all(|p| p.entry == s));
        let err = AddressMap::parse(&s).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");

        // Digits too long for any integer, and a long unbracketed IPv6 host.
        let digits = "9".repeat(1000);
        assert_eq!(
            only_problem(&format!("{digits}:-1:cdw:7000")).message(),
            format!(
                r#"entry 1 "{}...": dbid {}... is outside 1..32767"#,
                "9".repeat(61),
                "9".repeat(61)
            )
        );
        assert_eq!(
            only_problem(&format!("1:{digits}:cdw:7000")).message(),
            format!(
                r#"entry 1 "1:{}...": content {}... is outside -1..32767"#,
                "9".repeat(59),
                "9".repeat(61)
            )
        );
        let v6 = format!("fe80:{}:1", ":0".repeat(40));
        let message = only_problem(&format!("3:1:[{v6}]:7003")).message();
        assert!(
            message.ends_with(r#"..." is not a valid IPv6 address"#),
            "{message}"
        );
        assert!(
            message.len() <= 2 * (MAX_QUOTED_CHARS + 2) + 70,
            "{message}"
        );
        let message = only_problem(&format!("3:1:{}:7003", "9".repeat(100))).message();
        assert_eq!(
            message,
            format!(
                r#"entry 1 "3:1:{}...": host "{}..." is not a valid IPv4 address"#,
                "9".repeat(57),
                "9".repeat(61)
            )
        );
    }

    #[test]
    fn bad_ipv4() {
        for host in ["10.0.0.256", "10.0.1", "1234", "10..0.1"] {
            let s = format!("1:-1:{host}:7000");
            assert_one(
                &s,
                1,
                &format!("entry 1 {s:?}: host {host:?} is not a valid IPv4 address"),
                ProblemKind::BadIpv4 {
                    host: host.to_string(),
                },
            );
        }
        assert_eq!(
            only_problem("1:-1:10.0.1:7000").hint(),
            "Write an IPv4 address as four numbers 0..255 separated by dots, e.g. 10.0.0.5."
        );
    }

    #[test]
    fn bad_ipv6() {
        assert_one(
            "3:1:[fe80::g]:7003",
            1,
            r#"entry 1 "3:1:[fe80::g]:7003": host "[fe80::g]" is not a valid IPv6 address"#,
            ProblemKind::BadIpv6 {
                host: "fe80::g".to_string(),
            },
        );
        assert_one(
            "3:1:[fe80::1%eth0]:7003",
            1,
            r#"entry 1 "3:1:[fe80::1%eth0]:7003": host "[fe80::1%eth0]" is not a valid IPv6 address"#,
            ProblemKind::BadIpv6 {
                host: "fe80::1%eth0".to_string(),
            },
        );
        // Brackets are for IPv6 only.
        assert_eq!(
            only_problem("3:1:[10.0.0.1]:7003").kind,
            ProblemKind::BadIpv6 {
                host: "10.0.0.1".to_string()
            }
        );
        assert_eq!(
            only_problem("3:1:[fe80::g]:7003").hint(),
            "Put only an IPv6 address in brackets, e.g. 3:1:[fe80::1]:7003; \
             zone ids such as %eth0 are not supported."
        );
    }

    #[test]
    fn unbracketed_ipv6() {
        assert_one(
            "3:1:fe80::1:7003",
            1,
            r#"entry 1 "3:1:fe80::1:7003": IPv6 address "fe80::1" must be written in brackets"#,
            ProblemKind::UnbracketedIpv6 {
                host: "fe80::1".to_string(),
            },
        );
        assert_eq!(
            only_problem("3:1:fe80::1:7003").hint(),
            "Write an IPv6 address in brackets, e.g. 3:1:[fe80::1]:7003."
        );
        // The other fields of such an entry are still checked, in field order.
        assert_eq!(
            messages("0:1:::1:99999"),
            vec![
                (
                    1,
                    r#"entry 1 "0:1:::1:99999": dbid 0 is outside 1..32767"#.to_string()
                ),
                (
                    1,
                    r#"entry 1 "0:1:::1:99999": IPv6 address "::1" must be written in brackets"#
                        .to_string()
                ),
                (
                    1,
                    r#"entry 1 "0:1:::1:99999": port 99999 is outside 1..65535"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn unclosed_bracket() {
        assert_one(
            "3:1:[fe80::1:7003",
            1,
            r#"entry 1 "3:1:[fe80::1:7003": '[' is not closed by ']'"#,
            ProblemKind::UnclosedBracket,
        );
        assert_eq!(
            only_problem("3:1:[fe80::1:7003").hint(),
            "Close the IPv6 address with ']', e.g. 3:1:[fe80::1]:7003."
        );
    }

    #[test]
    fn duplicate_dbid() {
        assert_one(
            "1:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw1:7001,3:1:sdw2:7003",
            4,
            r#"entry 4 "3:1:sdw2:7003": dbid 3 appears twice (first in entry 3)"#,
            ProblemKind::DuplicateDbid {
                dbid: 3,
                first_position: 3,
            },
        );
        assert_one(
            "3:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw1:7001",
            3,
            r#"entry 3 "3:1:sdw1:7001": dbid 3 appears twice (first in entry 1)"#,
            ProblemKind::DuplicateDbid {
                dbid: 3,
                first_position: 1,
            },
        );
        assert_eq!(
            only_problem("3:-1:cdw:7000,3:1:sdw1:7001").hint(),
            "Each instance needs its own dbid; take dbid from gp_segment_configuration."
        );
    }

    #[test]
    fn duplicate_host_port() {
        assert_one(
            "1:-1:cdw:7000,2:0:sdw1:7002,3:0:SDW1:7002",
            3,
            r#"entry 3 "3:0:SDW1:7002": SDW1:7002 appears twice (first in entry 2)"#,
            ProblemKind::DuplicateHostPort {
                host: "SDW1".to_string(),
                port: 7002,
                first_position: 2,
            },
        );
        // IPv6 addresses compare by value, not by spelling.
        assert_one(
            "1:-1:[::1]:7000,2:0:[0:0::1]:7000",
            2,
            r#"entry 2 "2:0:[0:0::1]:7000": [0:0::1]:7000 appears twice (first in entry 1)"#,
            ProblemKind::DuplicateHostPort {
                host: "0:0::1".to_string(),
                port: 7000,
                first_position: 1,
            },
        );
        // Case and one trailing dot do not make another host.
        for (s, host) in [
            ("1:-1:sdw1:7002,2:0:SDW1:7002", "SDW1"),
            ("1:-1:sdw1:7002,2:0:sdw1.:7002", "sdw1."),
            (
                "1:-1:Sdw1.Example.COM.:7002,2:0:sdw1.example.com:7002",
                "sdw1.example.com",
            ),
        ] {
            assert_one(
                s,
                2,
                &format!(
                    "entry 2 {:?}: {host}:7002 appears twice (first in entry 1)",
                    s.split(',').nth(1).unwrap()
                ),
                ProblemKind::DuplicateHostPort {
                    host: host.to_string(),
                    port: 7002,
                    first_position: 1,
                },
            );
        }
        assert_eq!(
            messages("1:-1:SDW1:7002,2:0:sdw1.:7002,3:1:sdw1:7002"),
            vec![
                (
                    2,
                    r#"entry 2 "2:0:sdw1.:7002": sdw1.:7002 appears twice (first in entry 1)"#
                        .to_string()
                ),
                (
                    3,
                    r#"entry 3 "3:1:sdw1:7002": sdw1:7002 appears twice (first in entry 1)"#
                        .to_string()
                ),
            ]
        );
        // A name of 253 characters, duplicated: the host is clipped too.
        let name = vec!["k".repeat(63); 4].join(".")[..253].to_string();
        let problem = only_problem(&format!("1:-1:{name}:7000,2:0:{name}.:7000"));
        assert_eq!(
            problem.message(),
            format!(
                r#"entry 2 "2:0:{}...": {}...:7000 appears twice (first in entry 1)"#,
                &name[..57],
                &name[..61]
            )
        );
        // Same host, other port, or same port, other host: fine.
        assert!(AddressMap::check("1:-1:sdw1:7000,2:0:sdw1:7001,3:1:sdw2:7000").is_empty());
        assert_eq!(
            only_problem("1:-1:cdw:7000,2:0:cdw:7000").hint(),
            "Give every instance a distinct proxy port on a host."
        );
    }

    #[test]
    fn an_entry_can_duplicate_both_dbid_and_endpoint() {
        assert_eq!(
            messages("2:0:sdw1:7002,2:0:sdw1:7002"),
            vec![
                (
                    2,
                    r#"entry 2 "2:0:sdw1:7002": dbid 2 appears twice (first in entry 1)"#
                        .to_string()
                ),
                (
                    2,
                    r#"entry 2 "2:0:sdw1:7002": sdw1:7002 appears twice (first in entry 1)"#
                        .to_string()
                ),
            ]
        );
    }

    // ---- everything at once ----

    #[test]
    fn every_problem_is_reported_in_entry_order() {
        let s = "1:-1:cdw:7000, 2:0:sdw1, ,x:40000:sdw 2:99999,1:0:sdw3:7004,5:1:fe80::1:7005,";
        assert_eq!(
            messages(s),
            vec![
                (2, r#"entry 2 "2:0:sdw1": expected dbid:content:host:port, found 3 fields"#.to_string()),
                (3, "entry 3 is empty".to_string()),
                (4, r#"entry 4 "x:40000:sdw 2:99999": dbid "x" is not a number"#.to_string()),
                (4, r#"entry 4 "x:40000:sdw 2:99999": content 40000 is outside -1..32767"#.to_string()),
                (
                    4,
                    r#"entry 4 "x:40000:sdw 2:99999": host "sdw 2" is not a valid host name: ' ' is not allowed"#
                        .to_string()
                ),
                (4, r#"entry 4 "x:40000:sdw 2:99999": port 99999 is outside 1..65535"#.to_string()),
                (5, r#"entry 5 "1:0:sdw3:7004": dbid 1 appears twice (first in entry 1)"#.to_string()),
                (
                    6,
                    r#"entry 6 "5:1:fe80::1:7005": IPv6 address "fe80::1" must be written in brackets"#
                        .to_string()
                ),
            ]
        );
        let err = AddressMap::parse(s).unwrap_err();
        assert_eq!(err.problems.len(), 8);
        assert_eq!(
            err.to_string(),
            r#"entry 2 "2:0:sdw1": expected dbid:content:host:port, found 3 fields (and 7 more problems)"#
        );
        assert_eq!(
            err.hint(),
            "Write each entry as dbid:content:host:port, for example 1:-1:cdw:7000,2:0:sdw1:7002."
        );
    }

    #[test]
    fn an_instance_is_linked_to_every_other_content_not_to_its_own() {
        // Coordinator 1 and its standby 2 (content -1), primary 3 and its
        // mirror 4 (content 0), primary 5 (content 1).
        let m = AddressMap::parse(
            "1:-1:cdw:7000,2:-1:scdw:7000,3:0:sdw1:7001,4:0:sdw2:7001,5:1:sdw2:7002",
        )
        .unwrap();
        let dbids = |me| m.linked_to(me).iter().map(|e| e.dbid).collect::<Vec<_>>();
        assert_eq!(dbids(1), [3, 4, 5]);
        assert_eq!(dbids(3), [1, 2, 5]);
        assert_eq!(dbids(5), [1, 2, 3, 4]);
        assert!(dbids(9).is_empty());
    }

    #[test]
    fn the_detail_lists_at_most_twenty_problems() {
        let many = ",".repeat(100_000);
        let e = AddressMap::parse(&format!("x{many}")).unwrap_err();
        assert!(e.problems.len() > MAX_DETAIL_PROBLEMS);
        let detail = e.detail().unwrap();
        assert_eq!(detail.lines().count(), MAX_DETAIL_PROBLEMS + 1);
        assert!(
            detail.ends_with(&format!(
                "... and {} more problems",
                e.problems.len() - MAX_DETAIL_PROBLEMS
            )),
            "{}",
            detail.lines().last().unwrap()
        );
        assert!(detail.len() < 4096, "{} bytes", detail.len());
        assert_eq!(AddressMap::parse("1:-1:cdw:0").unwrap_err().detail(), None);
    }

    #[test]
    fn map_error_display_counts_the_rest() {
        let one = AddressMap::parse("1:-1:cdw:0").unwrap_err();
        assert_eq!(
            one.to_string(),
            r#"entry 1 "1:-1:cdw:0": port 0 is outside 1..65535"#
        );
        let two = AddressMap::parse("1:-1:cdw:0,,").unwrap_err();
        assert_eq!(
            two.to_string(),
            r#"entry 1 "1:-1:cdw:0": port 0 is outside 1..65535 (and 1 more problem)"#
        );
        let err: MapError = "1:-1:cdw:0".parse::<AddressMap>().unwrap_err();
        assert_eq!(err, one);
    }

    // ---- what is accepted ----

    #[test]
    fn spaces_around_entries_are_ignored() {
        let map = AddressMap::parse("  1:-1:cdw:7000, 2:0:sdw1:7002 ,\t3:1:sdw2:7003\n").unwrap();
        assert_eq!(
            map.entries(),
            &[
                peer(1, -1, "cdw", 7000),
                peer(2, 0, "sdw1", 7002),
                peer(3, 1, "sdw2", 7003)
            ]
        );
        assert_eq!(map.to_string(), "1:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw2:7003");
    }

    #[test]
    fn hosts_names_ipv4_and_bracketed_ipv6() {
        let map = AddressMap::parse(
            "1:-1:cdw.example.com:7000,2:0:sdw_1-a:7002,3:0:10.0.0.5:7003,\
             4:1:[::1]:7004,5:1:[fe80::1]:7005,6:2:[::ffff:10.0.0.7]:7006,7:2:SDW2:7007",
        )
        .unwrap();
        let hosts: Vec<&str> = map.entries().iter().map(|p| p.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "cdw.example.com",
                "sdw_1-a",
                "10.0.0.5",
                "::1",
                "fe80::1",
                "::ffff:10.0.0.7",
                "SDW2"
            ]
        );
        let v6: Vec<bool> = map
            .entries()
            .iter()
            .map(PeerAddr::is_ipv6_literal)
            .collect();
        assert_eq!(v6, [false, false, false, true, true, true, false]);
        assert_eq!(map.get(4).unwrap().to_string(), "4:1:[::1]:7004");
    }

    #[test]
    fn trailing_comma_is_accepted() {
        let with = AddressMap::parse("1:-1:cdw:7000,2:0:sdw1:7002,").unwrap();
        let with_space = AddressMap::parse("1:-1:cdw:7000,2:0:sdw1:7002, ").unwrap();
        let without = AddressMap::parse("1:-1:cdw:7000,2:0:sdw1:7002").unwrap();
        assert_eq!(with, without);
        assert_eq!(with_space, without);
        assert_eq!(with.len(), 2);
    }

    #[test]
    fn empty_map() {
        for s in ["", "   ", "\t\n"] {
            let map = AddressMap::parse(s).unwrap();
            assert!(map.is_empty());
            assert_eq!(map.len(), 0);
            assert_eq!(map, AddressMap::default());
            assert_eq!(map.to_string(), "");
            assert!(AddressMap::check(s).is_empty());
        }
    }

    #[test]
    fn entries_keep_their_order_and_get_finds_by_dbid() {
        let map: AddressMap = "3:1:sdw2:7003,1:-1:cdw:7000,2:0:sdw1:7002".parse().unwrap();
        let dbids: Vec<u16> = map.entries().iter().map(|p| p.dbid).collect();
        assert_eq!(dbids, [3, 1, 2]);
        assert_eq!(map.get(2), Some(&peer(2, 0, "sdw1", 7002)));
        assert_eq!(map.get(4), None);
        assert_eq!(map.len(), 3);
        assert!(!map.is_empty());
    }

    #[test]
    fn canonical_form_round_trips() {
        let s = " 2:0:SDW1:07002 , 1:-1:[FE80::1]:7000,3:-0:10.0.0.5:7003,";
        let map = AddressMap::parse(s).unwrap();
        let canonical = map.to_string();
        assert_eq!(
            canonical,
            "2:0:SDW1:7002,1:-1:[FE80::1]:7000,3:0:10.0.0.5:7003"
        );
        assert_eq!(AddressMap::parse(&canonical).unwrap(), map);
    }

    // ---- from_entries ----

    #[test]
    fn from_entries_accepts_a_valid_list() {
        let entries = vec![
            peer(1, -1, "cdw", 7000),
            peer(2, 0, "fe80::1", 7002),
            peer(3, 0, "10.0.0.5", 7003),
        ];
        let map = AddressMap::from_entries(entries.clone()).unwrap();
        assert_eq!(map.entries(), &entries[..]);
        assert_eq!(
            AddressMap::parse(&map.to_string()).unwrap(),
            map,
            "from_entries and parse agree"
        );
        assert!(AddressMap::from_entries(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn from_entries_validates_like_parse() {
        let err = AddressMap::from_entries(vec![
            peer(0, -2, "cdw", 0),
            peer(2, 0, "sdw 1", 7002),
            peer(3, 0, "fe80::g", 7003),
            peer(4, 0, "[::1]", 7004),
            peer(5, 1, "", 7005),
            peer(6, 1, "sdw2", 7006),
            peer(6, 2, "SDW2", 7006),
        ])
        .unwrap_err();
        let got: Vec<(usize, String)> = err
            .problems
            .iter()
            .map(|p| (p.position, p.message()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, r#"entry 1 "0:-2:cdw:0": dbid 0 is outside 1..32767"#.to_string()),
                (1, r#"entry 1 "0:-2:cdw:0": content -2 is outside -1..32767"#.to_string()),
                (1, r#"entry 1 "0:-2:cdw:0": port 0 is outside 1..65535"#.to_string()),
                (
                    2,
                    r#"entry 2 "2:0:sdw 1:7002": host "sdw 1" is not a valid host name: ' ' is not allowed"#
                        .to_string()
                ),
                (
                    3,
                    r#"entry 3 "3:0:[fe80::g]:7003": host "[fe80::g]" is not a valid IPv6 address"#
                        .to_string()
                ),
                (
                    4,
                    r#"entry 4 "4:0:[[::1]]:7004": host "[::1]" is not a valid host name: '[' is not allowed"#
                        .to_string()
                ),
                (5, r#"entry 5 "5:1::7005": host is empty"#.to_string()),
                (7, r#"entry 7 "6:2:SDW2:7006": dbid 6 appears twice (first in entry 6)"#.to_string()),
                (7, r#"entry 7 "6:2:SDW2:7006": SDW2:7006 appears twice (first in entry 6)"#.to_string()),
            ]
        );
    }

    // ---- diff ----

    #[test]
    fn diff_table() {
        struct Case {
            name: &'static str,
            old: &'static str,
            new: &'static str,
            added: &'static [u16],
            removed: &'static [u16],
            changed: &'static [u16],
        }
        let base = "1:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw2:7003";
        let cases = [
            Case {
                name: "identical",
                old: base,
                new: base,
                added: &[],
                removed: &[],
                changed: &[],
            },
            Case {
                name: "reordered and respaced",
                old: base,
                new: " 3:1:sdw2:7003 ,2:0:sdw1:7002, 1:-1:cdw:7000,",
                added: &[],
                removed: &[],
                changed: &[],
            },
            Case {
                name: "added, written out of order",
                old: base,
                new: "5:2:sdw3:7005,1:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw2:7003,4:2:sdw3:7004",
                added: &[4, 5],
                removed: &[],
                changed: &[],
            },
            Case {
                name: "removed",
                old: base,
                new: "2:0:sdw1:7002",
                added: &[],
                removed: &[1, 3],
                changed: &[],
            },
            Case {
                name: "changed port",
                old: base,
                new: "1:-1:cdw:7000,2:0:sdw1:7102,3:1:sdw2:7003",
                added: &[],
                removed: &[],
                changed: &[2],
            },
            Case {
                name: "changed host",
                old: base,
                new: "1:-1:cdw:7000,2:0:sdw1:7002,3:1:sdw9:7003",
                added: &[],
                removed: &[],
                changed: &[3],
            },
            Case {
                name: "changed content",
                old: base,
                new: "1:-1:cdw:7000,2:5:sdw1:7002,3:1:sdw2:7003",
                added: &[],
                removed: &[],
                changed: &[2],
            },
            Case {
                name: "everything at once, sorted by dbid",
                old: "9:3:a:1,3:1:sdw2:7003,7:2:b:2,1:-1:cdw:7000,2:0:sdw1:7002",
                new: "8:3:c:3,2:0:sdw1:7102,4:2:d:4,1:-1:cdw2:7000,3:1:sdw2:7003",
                added: &[4, 8],
                removed: &[7, 9],
                changed: &[1, 2],
            },
            Case {
                name: "from empty",
                old: "",
                new: base,
                added: &[1, 2, 3],
                removed: &[],
                changed: &[],
            },
            Case {
                name: "to empty",
                old: base,
                new: "",
                added: &[],
                removed: &[1, 2, 3],
                changed: &[],
            },
        ];
        for case in cases {
            let old = AddressMap::parse(case.old).unwrap();
            let new = AddressMap::parse(case.new).unwrap();
            let diff = AddressMap::diff(&old, &new);
            let dbids = |v: &[PeerAddr]| v.iter().map(|p| p.dbid).collect::<Vec<_>>();
            assert_eq!(dbids(&diff.added), case.added, "{}: added", case.name);
            assert_eq!(dbids(&diff.removed), case.removed, "{}: removed", case.name);
            let changed: Vec<u16> = diff.changed.iter().map(|(o, _)| o.dbid).collect();
            assert_eq!(changed, case.changed, "{}: changed", case.name);
            assert_eq!(
                diff.is_empty(),
                case.added.is_empty() && case.removed.is_empty() && case.changed.is_empty(),
                "{}: is_empty",
                case.name
            );
            // Each list carries the full entries from the right side.
            for p in &diff.added {
                assert_eq!(new.get(p.dbid), Some(p), "{}", case.name);
            }
            for p in &diff.removed {
                assert_eq!(old.get(p.dbid), Some(p), "{}", case.name);
            }
            for (o, n) in &diff.changed {
                assert_eq!(o.dbid, n.dbid, "{}", case.name);
                assert_ne!(o, n, "{}", case.name);
                assert_eq!(old.get(o.dbid), Some(o), "{}", case.name);
                assert_eq!(new.get(n.dbid), Some(n), "{}", case.name);
            }
        }
    }

    #[test]
    fn diff_changed_carries_old_and_new() {
        let old = AddressMap::parse("2:0:sdw1:7002").unwrap();
        let new = AddressMap::parse("2:0:[fe80::2]:7002").unwrap();
        assert_eq!(
            AddressMap::diff(&old, &new),
            MapDiff {
                added: vec![],
                removed: vec![],
                changed: vec![(peer(2, 0, "sdw1", 7002), peer(2, 0, "fe80::2", 7002))],
            }
        );
    }

    // ---- socket addresses ----

    #[test]
    fn socket_addr_string_for_each_host_kind() {
        let v4 = peer(3, 0, "10.0.0.5", 7003);
        let name = peer(2, 0, "sdw1", 7002);
        let v6 = peer(4, 1, "fe80::1", 7004);
        assert_eq!(v4.socket_addr_string(), "10.0.0.5:7003");
        assert_eq!(name.socket_addr_string(), "sdw1:7002");
        assert_eq!(v6.socket_addr_string(), "[fe80::1]:7004");
        // Literals resolve without DNS, exactly as the resolver will see them.
        let resolve = |p: &PeerAddr| -> Vec<SocketAddr> {
            p.socket_addr_string().to_socket_addrs().unwrap().collect()
        };
        assert_eq!(resolve(&v4), vec!["10.0.0.5:7003".parse().unwrap()]);
        assert_eq!(resolve(&v6), vec!["[fe80::1]:7004".parse().unwrap()]);
        assert!(!v4.is_ipv6_literal());
        assert!(!name.is_ipv6_literal());
        assert!(v6.is_ipv6_literal());
        assert_eq!(v6.to_string(), "4:1:[fe80::1]:7004");
        assert_eq!(name.to_string(), "2:0:sdw1:7002");
    }
}
