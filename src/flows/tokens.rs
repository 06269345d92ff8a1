//! What only an app's server may ask for: `POST /v1/tokens` (a short-lived browser token for
//! one of its users), `GET /v1/webhook-secret` (the secret its webhooks are signed with) and
//! `GET /account/costs` (the Kling account's resource packs, which Kling's clients read to
//! check their credentials when a session opens).

use serde_json::{json, Value};

use crate::auth::browser_token;
use crate::auth::Client;
use crate::error::{code, ApiError};
use crate::ports::{KlingApi, Runtime};
use crate::validate;
use crate::validate::UrlPolicy;

use super::edge::{Answer, Edge, EdgePorts};

impl<P: EdgePorts> Edge<'_, P> {
    /// `POST /v1/tokens`, with its body read.
    pub fn mint_token(&self, client: &Client, body: &[u8]) -> Result<Answer, ApiError> {
        client.require_server_key("mint tokens")?;
        let Some(secret) = &self.config.token_secret else {
            return Err(ApiError::new(
                403,
                code::NO_PERMISSION,
                "browser tokens are not enabled on this deployment (PROXY_TOKEN_SECRET is not set)",
            ));
        };
        let policy = UrlPolicy { allow_private: self.config.allow_private_urls };
        let request = browser_token::mint_request(body, policy)?;
        let key_digest = self
            .config
            .clients
            .key_digest(&client.app)
            .ok_or_else(|| ApiError::internal("the minting key vanished"))?;
        let now_secs = (self.runtime.now_ms() / 1000) as i64;
        let minted =
            browser_token::mint(secret.expose().as_bytes(), &client.app, key_digest, &request, now_secs);
        let data = serde_json::to_value(&minted).map_err(|_| ApiError::internal("encoding the token"))?;
        Ok(Answer::Success(data))
    }

    /// `GET /v1/webhook-secret`: the `whsec_` secret that verifies this client's webhooks,
    /// derived from `PROXY_WEBHOOK_SECRET` and the client's name (see `crate::links::webhook`).
    pub fn webhook_secret(&self, client: &Client) -> Result<Answer, ApiError> {
        client.require_server_key("read the webhook secret")?;
        let Some(key) = &self.config.proxy_webhook_key else {
            return Err(ApiError::new(
                403,
                code::NO_PERMISSION,
                "webhooks are not enabled on this deployment (PROXY_WEBHOOK_SECRET is not set)",
            ));
        };
        Ok(Answer::Success(json!({"client": client.app, "secret": key.for_client(&client.app).to_secret()})))
    }

    /// `GET /v1/account`, for a server key: each Kling account's resource packs (what is
    /// left of each, and when it expires), from Kling's `GET /account/costs` of the last year,
    /// cached a minute (Kling's figures lag by up to 12 hours). An account Kling does not
    /// answer for says why, beside the others.
    pub async fn account(&self, client: &Client) -> Result<Answer, ApiError> {
        client.require_server_key("read the Kling accounts' packs")?;
        let now = self.runtime.now_ms();
        let mut accounts = Vec::new();
        for account in self.config.accounts.all() {
            let mut entry = json!({"name": account.name});
            match self.kling.account_packs(&account.name, now).await {
                Ok(reply) if reply.status == 200 => {
                    let data = crate::kling::task::envelope_data(&reply.body).unwrap_or_default();
                    let packs: Vec<Value> = data
                        .get("resource_pack_subscribe_infos")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|pack| {
                            json!({
                                "name": pack.get("resource_pack_name"),
                                "type": pack.get("resource_pack_type"),
                                "total": pack.get("total_quantity"),
                                "remaining": pack.get("remaining_quantity"),
                                "expires_at": pack.get("invalid_time"),
                                "status": pack.get("status"),
                            })
                        })
                        .collect();
                    entry["packs"] = Value::Array(packs);
                }
                Ok(reply) => entry["error"] = json!(format!("Kling answered {}", reply.status)),
                Err(error) => entry["error"] = json!(error.message),
            }
            accounts.push(entry);
        }
        Ok(Answer::Success(json!({
            "accounts": accounts,
            "cached_seconds": crate::ports::ACCOUNT_PACKS_CACHE_SECS,
            "note": "Kling's remaining figures may lag by up to 12 hours",
        })))
    }

    /// `GET /account/costs?start_time=&end_time=[&resource_pack_name=]`: Kling's answer,
    /// unchanged. A browser token may not read the account's packs.
    pub async fn account_costs(&self, client: &Client, query: Option<&str>) -> Result<Answer, ApiError> {
        client.require_server_key("read the Kling account's costs")?;
        let query = validate::costs_query(query)?;
        self.kling.account_costs(&query).await.map(Answer::Kling)
    }
}
