//! Helpers for the black-box tests of `sgswitch` (the `*.rs` files beside
//! this crate, built as test targets of the `sgswitch` package): running the
//! binary, writing
//! configuration directories, and the conformance-table format.
//!
//! # Conformance case files (`tests/conformance/*.toml`)
//! Each `[[case]]` is a small configuration plus packets plus the expected
//! decision of each packet:
//! - `name`, `covers` (the `semantics.md` step or bullet it shows);
//! - `model` (`host.toml` `policy_model`, default `priority`);
//! - `groups`, `prefix_lists`, `ports`: tables written as-is to
//!   `groups/<id>.toml`, … (so they are checked by the real loader). When
//!   `ports` is empty, one port `eni-a` (10.0.0.1, fd00::1) is bound to all the
//!   case's groups in the order they are listed;
//! - `packets`: the keys of a `trace --batch` line (`port` defaults to `eni-a`)
//!   and `expect`: `"<allow|deny> rule <group>/<direction>/<index>"`,
//!   `"<allow|deny> default"` or `"allow intra-group"`.
#![deny(unsafe_code)]

pub mod cpu;
pub mod fleet;
pub mod frames;
pub mod guest;
pub mod infra;
pub mod netns;
pub mod vguest;
pub mod xdpgen;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use tempfile::TempDir;

/// Runs the `sgswitch` binary at `bin` with `args`. Test targets pass
/// `env!("CARGO_BIN_EXE_sgswitch")`, which cargo builds before the tests run.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run sgswitch")
}

/// Writes `files` (relative path, contents) into a new temporary directory.
pub fn write_dir(files: &[(String, String)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, text) in files {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("file in a folder")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    dir
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub covers: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub ports: Vec<toml::Table>,
    #[serde(default)]
    pub groups: Vec<toml::Table>,
    #[serde(default)]
    pub prefix_lists: Vec<toml::Table>,
    pub packets: Vec<PacketCase>,
}

/// A protocol as a name or a number, as in a batch line.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Proto {
    Name(String),
    Number(u8),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketCase {
    #[serde(default = "default_port")]
    pub port: String,
    pub direction: String,
    pub proto: Proto,
    pub remote: String,
    pub remote_port: Option<u16>,
    pub local: Option<String>,
    pub local_port: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub expect: String,
}

fn default_port() -> String {
    "eni-a".into()
}

/// An expected decision, parsed from `expect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub verdict: String,
    pub by: String,
    /// (group, direction, index) when `by` is `rule`.
    pub rule: Option<(String, String, u16)>,
}

impl Expected {
    pub fn parse(s: &str) -> Expected {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [v @ ("allow" | "deny"), "rule", id] => {
                let parts: Vec<&str> = id.split('/').collect();
                let [g, d, i] = parts.as_slice() else { panic!("bad rule id in expect {s:?}") };
                Expected { verdict: (*v).into(), by: "rule".into(), rule: Some(((*g).into(), (*d).into(), i.parse().expect("rule index"))) }
            }
            [v @ ("allow" | "deny"), by @ ("default" | "intra-group")] => Expected { verdict: (*v).into(), by: (*by).into(), rule: None },
            _ => panic!("cannot read expect {s:?}"),
        }
    }
}

impl Case {
    /// The configuration directory of the case, as files.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let model = self.model.as_deref().unwrap_or("priority");
        files.push(("host.toml".into(), format!("policy_model = \"{model}\"\n")));
        let id = |t: &toml::Table| t.get("id").and_then(|v| v.as_str()).expect("every object has an id").to_string();
        for g in &self.groups {
            files.push((format!("groups/{}.toml", id(g)), toml::to_string(g).expect("toml")));
        }
        for p in &self.prefix_lists {
            files.push((format!("prefix-lists/{}.toml", id(p)), toml::to_string(p).expect("toml")));
        }
        if self.ports.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(|g| format!("{:?}", id(g))).collect();
            files.push((
                "ports/eni-a.toml".into(),
                format!("id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nipv6 = [\"fd00::1\"]\nsecurity_groups = [{}]\n", groups.join(", ")),
            ));
        }
        for p in &self.ports {
            files.push((format!("ports/{}.toml", id(p)), toml::to_string(p).expect("toml")));
        }
        files
    }

    /// The packets as `trace --batch` lines.
    pub fn batch(&self) -> String {
        let mut s = String::new();
        for p in &self.packets {
            let mut m = serde_json::Map::new();
            m.insert("port".into(), p.port.clone().into());
            m.insert("direction".into(), p.direction.clone().into());
            m.insert(
                "proto".into(),
                match &p.proto {
                    Proto::Name(n) => n.clone().into(),
                    Proto::Number(n) => (*n).into(),
                },
            );
            m.insert("remote".into(), p.remote.clone().into());
            let mut opt = |k: &str, v: Option<serde_json::Value>| {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            };
            opt("remote_port", p.remote_port.map(Into::into));
            opt("local", p.local.clone().map(Into::into));
            opt("local_port", p.local_port.map(Into::into));
            opt("icmp_type", p.icmp_type.map(Into::into));
            opt("icmp_code", p.icmp_code.map(Into::into));
            s.push_str(&serde_json::Value::Object(m).to_string());
            s.push('\n');
        }
        s
    }

    /// The configured (priority, action) of a group's rule, read from the
    /// case's own tables (defaults: priority 1, action allow).
    pub fn rule_fields(&self, group: &str, direction: &str, index: u16) -> (i64, String) {
        let g = self.groups.iter().find(|g| g.get("id").and_then(|v| v.as_str()) == Some(group)).expect("expected group exists");
        let rules = g.get(direction).and_then(|v| v.as_array()).expect("expected direction has rules");
        let r = rules[usize::from(index)].as_table().expect("rule table");
        let prio = r.get("priority").and_then(|v| v.as_integer()).unwrap_or(1);
        let action = r.get("action").and_then(|v| v.as_str()).unwrap_or("allow").to_string();
        (prio, action)
    }
}

/// Reads every case file of `tests/conformance/`.
pub fn conformance_cases() -> Vec<(String, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/conformance")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("read case file");
        let file: CaseFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let name = p.file_name().expect("file name").to_string_lossy().into_owned();
        out.extend(file.case.into_iter().map(|c| (name.clone(), c)));
    }
    out
}

impl PacketCase {
    /// The packet as a policy query (what `trace` asks).
    pub fn query(&self) -> sgswitch_filter::Query {
        use sgswitch_config::Direction;
        let direction = if self.direction == "ingress" { Direction::Ingress } else { Direction::Egress };
        let proto = match &self.proto {
            Proto::Name(n) => sgswitch_config::parse_protocol(n).flatten().expect("a packet protocol"),
            Proto::Number(n) => *n,
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("IP address");
        sgswitch_filter::Query {
            port: self.port.clone(),
            direction,
            proto,
            remote: ip(&self.remote),
            local: self.local.as_deref().map(ip),
            remote_port: self.remote_port,
            local_port: self.local_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
        }
    }
}
