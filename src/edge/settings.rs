//! Reads the Worker's `Env` into a validated [`Config`] (the rules live in `crate::config`).

use worker::Env;

use crate::config::Config;
use crate::error::ApiError;

/// Reads every setting, from `[vars]` or secrets alike (locally, `--var` and `.dev.vars`).
pub fn config(env: &Env) -> Result<Config, ApiError> {
    Config::from_lookup(|name| {
        env.var(name).or_else(|_| env.secret(name)).ok().map(|value| value.to_string())
    })
}
