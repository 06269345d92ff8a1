//! `POST /v1/tokens`: an app's server mints a short-lived browser token for one of its users.

use worker::{Request, Response};

use crate::auth::Client;
use crate::browser_token;
use crate::error::{code, ApiError};

use super::{clock, http, Call};

pub async fn mint(request: &mut Request, call: &Call<'_>, client: &Client) -> Result<Response, ApiError> {
    client.require_server_key()?;
    let Some(secret) = &call.config.token_secret else {
        return Err(ApiError::new(
            403,
            code::NO_PERMISSION,
            "browser tokens are not enabled on this deployment (PROXY_TOKEN_SECRET is not set)",
        ));
    };
    let body = http::read_body(request).await?;
    let mint_request = browser_token::mint_request(&body)?;
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
