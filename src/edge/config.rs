//! Reads the Worker's `Env` into a validated [`Config`] (the rules live in `crate::config`),
//! once per isolate. The runtime hands every request of an isolate the same `env` object,
//! whose settings cannot change under it (a new secret or var means a new isolate): while
//! it does, the parsed settings are reused at the cost of one identity check. A different
//! `env` object has its settings read and fingerprinted, and parsed again only if they
//! differ from the last ones parsed.

use std::cell::RefCell;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use worker::js_sys::Object;
use worker::wasm_bindgen::JsValue;
use worker::Env;

use crate::config::{Config, SETTINGS};
use crate::error::ApiError;

/// The settings parsed last in this isolate: for which `env` object, from which raw values.
struct Parsed {
    env: JsValue,
    fingerprint: [u8; 32],
    config: Rc<Config>,
}

thread_local! {
    static PARSED: RefCell<Option<Parsed>> = const { RefCell::new(None) };
}

/// Reads every setting, from `[vars]` or secrets alike (locally, `--var` and `.dev.vars`).
pub fn read(env: &Env) -> Result<Rc<Config>, ApiError> {
    let same_env = |parsed: &Parsed| Object::is(&parsed.env, env);
    if let Some(config) =
        PARSED.with(|parsed| parsed.borrow().as_ref().filter(|p| same_env(p)).map(|p| Rc::clone(&p.config)))
    {
        return Ok(config);
    }
    let values: Vec<Option<String>> = SETTINGS
        .iter()
        .map(|setting| {
            env.var(setting.name).or_else(|_| env.secret(setting.name)).ok().map(|value| value.to_string())
        })
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
    let unchanged = PARSED.with(|parsed| {
        parsed.borrow().as_ref().filter(|p| p.fingerprint == fingerprint).map(|p| Rc::clone(&p.config))
    });
    let config = match unchanged {
        Some(config) => config,
        None => Rc::new(Config::from_lookup(|name| {
            SETTINGS.iter().position(|setting| setting.name == name).and_then(|index| values[index].clone())
        })?),
    };
    let env = JsValue::from(env.clone());
    PARSED
        .with(|parsed| *parsed.borrow_mut() = Some(Parsed { env, fingerprint, config: Rc::clone(&config) }));
    Ok(config)
}
