//! Reading tasks: one task (`GET {path}/{id}`, and useapi.net's `GET /v1/kling/tasks/{id}`)
//! and a page of them (`GET {path}`).
//!
//! A finished task is answered from its edge copy (Workers KV) with no coordinator call and
//! no Kling call; a running one, or one without its edge copy yet, by its tenant's coordinator, which asks Kling
//! when the task has been quiet; a task of the previous version from its old KV record.
//! Every answer gets fresh signed links to the deployment's copies of its result files.

use serde_json::Value;

use crate::api::{useapi, VIDEO_TO_AUDIO};
use crate::auth::Client;
use crate::error::ApiError;
use crate::kling::task;
use crate::links::result_links::{self, Minter};
use crate::ports::{Coordinators, EdgeCopies, Runtime};
use crate::record::TaskAnswer;
use crate::validate::Page;

use super::edge::{Answer, Edge, EdgePorts};
use super::protocol;

impl<P: EdgePorts> Edge<'_, P> {
    /// `GET {path}/{id}`: one of the caller's tasks of `endpoint_code`, by task id or
    /// external task id.
    pub async fn query(&self, client: &Client, endpoint_code: u8, id: &str) -> Result<Answer, ApiError> {
        self.find(client, endpoint_code, id).await.map(Answer::Success)
    }

    /// `GET /v1/kling/tasks/{id}`: an add-sound task, useapi.net's way.
    pub async fn useapi_task(&self, client: &Client, id: &str) -> Result<Answer, ApiError> {
        let task = self.find(client, VIDEO_TO_AUDIO.code, id).await?;
        Ok(Answer::UseApi(useapi::task_answer(&task)))
    }

    /// `GET {path}`: a page of the caller's tasks of `endpoint_code`, newest first.
    pub async fn list(&self, client: &Client, endpoint_code: u8, page: Page) -> Result<Answer, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let call = protocol::List {
            tenant: client.tenant.clone(),
            endpoint: endpoint_code,
            page_num: page.num,
            page_size: page.size,
        };
        let tasks = self.coordinators.call(&shard, call).await?;
        Ok(Answer::Success(Value::Array(tasks.iter().map(|task| self.render(&shard, task)).collect())))
    }

    async fn find(&self, client: &Client, endpoint_code: u8, id: &str) -> Result<Value, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let task = self.find_answer(&shard, client, endpoint_code, id).await?;
        Ok(self.render(&shard, &task))
    }

    async fn find_answer(
        &self,
        shard: &str,
        client: &Client,
        endpoint_code: u8,
        id: &str,
    ) -> Result<TaskAnswer, ApiError> {
        if let Some(copy) = self.edge_copies.get(shard, id).await {
            if copy.tenant == client.tenant && copy.endpoint == endpoint_code {
                return Ok(copy.task);
            }
        }
        let call =
            protocol::Query { tenant: client.tenant.clone(), endpoint: endpoint_code, id: id.to_owned() };
        match self.coordinators.call(shard, call).await {
            Err(not_found) if not_found.status == 404 && endpoint_code == VIDEO_TO_AUDIO.code => {
                let data = self.edge_copies.legacy_task(&client.tenant, id).await.ok_or(not_found)?;
                Ok(TaskAnswer { data, copies: Vec::new() })
            }
            outcome => outcome,
        }
    }

    /// A task of `shard` as JSON, with fresh signed links to its result copies.
    pub(crate) fn render(&self, shard: &str, task: &TaskAnswer) -> Value {
        let minter = Minter {
            key: &self.config.link_key,
            origin: self.origin,
            shard,
            now_ms: self.runtime.now_ms(),
            ttl_secs: self.config.result_link_ttl_secs,
        };
        result_links::render(task, Some(&minter))
    }
}
