//! The values `keygate keys …` options take, parsed by clap with messages that name the form
//! expected.

use std::time::Duration;

use clap::ValueEnum;

use crate::key::{Environment, KeyType};

#[derive(Clone, Copy, ValueEnum)]
pub enum EnvArg {
    Live,
    Test,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Active,
    Expired,
    Revoked,
}

impl StateArg {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StateArg::Active => "active",
            StateArg::Expired => "expired",
            StateArg::Revoked => "revoked",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TypeArg {
    Secret,
    Publishable,
}

pub(super) fn parse_net_arg(s: &str) -> Result<ipnet::IpNet, String> {
    crate::config::parse_net(s).ok_or_else(|| format!("{s:?} is not an IP address or CIDR"))
}

pub(super) fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let (n, w) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not LIMIT/WINDOW, e.g. 100/1m"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number"))?;
    let w = humantime::parse_duration(w.trim()).map_err(|e| format!("{w:?}: {e}"))?;
    if n == 0 || w.as_secs() == 0 {
        return Err("limit and window (whole seconds) must be greater than zero".into());
    }
    Ok((n, w))
}

pub(super) fn parse_restriction(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not attribute=value,value"))?;
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        return Err(format!("{s:?}: at least one allowed value"));
    }
    Ok((name.trim().to_owned(), values))
}

pub(super) fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

impl From<EnvArg> for Environment {
    fn from(e: EnvArg) -> Self {
        match e {
            EnvArg::Live => Environment::Live,
            EnvArg::Test => Environment::Test,
        }
    }
}

impl From<TypeArg> for KeyType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Secret => KeyType::Secret,
            TypeArg::Publishable => KeyType::Publishable,
        }
    }
}
