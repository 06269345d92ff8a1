//! Reads the Worker's `Env` into a validated [`Config`] (the rules live in `crate::config`),
//! once per isolate: the settings are read on every request (cheap), fingerprinted, and
//! parsed again only when they changed (a secret rotated, a var edited).

use std::cell::RefCell;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use worker::Env;

use crate::config::{Config, SETTINGS};
use crate::error::ApiError;

thread_local! {
    /// The last settings parsed in this isolate, with the fingerprint of their raw values.
    static PARSED: RefCell<Option<([u8; 32], Rc<Config>)>> = const { RefCell::new(None) };
}

/// Reads every setting, from `[vars]` or secrets alike (locally, `--var` and `.dev.vars`).
pub fn config(env: &Env) -> Result<Rc<Config>, ApiError> {
    let values: Vec<Option<String>> = SETTINGS
        .iter()
        .map(|name| env.var(name).or_else(|_| env.secret(name)).ok().map(|value| value.to_string()))
        .collect();
    let mut hasher = Sha256::new();
    for value in &values {
        match value {
            Some(value) => {
                hasher.update([1]);
                hasher.update((value.len() as u64).to_le_bytes());
                hasher.update(value.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    let fingerprint: [u8; 32] = hasher.finalize().into();
    if let Some(config) = PARSED.with(|parsed| {
        parsed.borrow().as_ref().filter(|(seen, _)| *seen == fingerprint).map(|(_, config)| Rc::clone(config))
    }) {
        return Ok(config);
    }
    let config = Rc::new(Config::from_lookup(|name| {
        SETTINGS.iter().position(|setting| *setting == name).and_then(|index| values[index].clone())
    })?);
    PARSED.with(|parsed| *parsed.borrow_mut() = Some((fingerprint, Rc::clone(&config))));
    Ok(config)
}
