//! What only an app's server may ask for: `POST /v1/tokens` (a short-lived browser token for
//! one of its users) and `GET /v1/webhook-secret` (the secret its webhooks are signed with).

use worker::{Request, Response};

use crate::auth::Client;
use crate::browser_token;
use crate::error::{code, ApiError};
use crate::validate::UrlPolicy;

use super::{clock, http, Call};

pub async fn mint(request: &mut Request, call: &Call<'_>, client: &Client) -> Result<Response, ApiError> {
    client.require_server_key("mint tokens")?;
    let Some(secret) = &call.config.token_secret else {
        return Err(ApiError::new(
            403,
            code::NO_PERMISSION,
            "browser tokens are not enabled on this deployment (PROXY_TOKEN_SECRET is not set)",
        ));
    };
    let body = http::read_body(request, http::MAX_BODY_BYTES).await?;
    let policy = UrlPolicy { allow_private: call.config.allow_private_urls };
    let mint_request = browser_token::mint_request(&body, policy)?;
    let key_digest = call
        .config
        .clients
        .key_digest(&client.app)
        .ok_or_else(|| ApiError::internal("the minting key vanished"))?;
    let minted = browser_token::mint(
        secret.expose().as_bytes(),
        &client.app,
        key_digest,
        &mint_request,
        clock::now_secs(),
    );
    let data = serde_json::to_value(&minted).map_err(|_| ApiError::internal("encoding the token"))?;
    Ok(http::success(&data, call.request_id))
}

/// `GET /v1/webhook-secret`: the `whsec_` secret that verifies this client's webhooks, derived
/// from `PROXY_WEBHOOK_SECRET` and the client's name (see `crate::webhook`).
pub fn webhook_secret(call: &Call<'_>, client: &Client) -> Result<Response, ApiError> {
    client.require_server_key("read the webhook secret")?;
    let Some(key) = &call.config.proxy_webhook_key else {
        return Err(ApiError::new(
            403,
            code::NO_PERMISSION,
            "webhooks are not enabled on this deployment (PROXY_WEBHOOK_SECRET is not set)",
        ));
    };
    let data = serde_json::json!({"client": client.app, "secret": key.for_client(&client.app).to_secret()});
    Ok(http::success(&data, call.request_id))
}
