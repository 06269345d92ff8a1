//! The API document (`public/openapi.json`, OpenAPI 3.1), generated from the tables the worker
//! itself runs on: every surface's paths, and each body's schema from its fields' rules, so
//! the document cannot drift from what the worker accepts.
//!
//! What no table holds (the envelope, tokens, callbacks, health, the shared answers and error
//! responses) is written by hand in `openapi_base.json`, which this completes. A native test
//! keeps `public/openapi.json` equal to the generated document; `make openapi` rewrites it.

use serde_json::{json, Map, Value};

use super::fields::{Check, Field, Rule, Target};
use super::surfaces::{Style, Surface, SURFACES};

const BASE: &str = include_str!("openapi_base.json");

/// The whole document.
pub fn document() -> Value {
    let mut document: Value = serde_json::from_str(BASE).expect("openapi_base.json is valid JSON");
    let mut paths = Map::new();
    for surface in SURFACES {
        let schema_name = schema_name(surface);
        document["components"]["schemas"][&schema_name] = body_schema(surface);
        match surface.style {
            Style::Kling => {
                paths.insert(surface.path.to_owned(), kling_collection(surface, &schema_name));
                if surface.queries {
                    paths.insert(format!("{}/{{task_id}}", surface.path), kling_query(surface));
                    paths.insert(format!("{}/{{task_id}}/cancel", surface.path), kling_cancel(surface));
                }
            }
            Style::UseApi => {
                paths.insert(surface.path.to_owned(), useapi_create(surface, &schema_name));
            }
        }
    }
    paths.insert("/v1/kling/tasks/{task_id}".to_owned(), useapi_task());
    for (path, item) in document["paths"].as_object().cloned().unwrap_or_default() {
        paths.insert(path, item);
    }
    // Uploads take an Idempotency-Key too (their parameter is in the base document).
    for (path, error) in
        [("/v1/assets", envelope_error as fn(&str) -> Value), ("/v1/kling/assets", useapi_error)]
    {
        if let Some(responses) =
            paths.get_mut(path).and_then(|item| item["post"]["responses"].as_object_mut())
        {
            for (code, response) in idempotency_responses(error) {
                responses.insert(code.into(), response);
            }
        }
    }
    document["paths"] = Value::Object(paths);
    document
}

/// `createText2video`-style names, from the path's last segment.
fn operation_suffix(surface: &Surface) -> String {
    let last = surface.path.rsplit('/').next().unwrap_or_default();
    let mut name = String::new();
    let family = if surface.path.starts_with("/v1/videos/video-to-audio") { "Simplified" } else { "" };
    for part in last.split('-') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.push_str(chars.as_str());
        }
    }
    format!("{name}{family}")
}

fn schema_name(surface: &Surface) -> String {
    format!("{}Create", operation_suffix(surface))
}

fn rule_schema(rule: Rule) -> Value {
    match rule {
        Rule::Text { max, nonempty } => {
            let mut schema = json!({"type": "string", "maxLength": max});
            if nonempty {
                schema["minLength"] = json!(1);
            }
            schema
        }
        Rule::OneOf(values) => json!({"type": "string", "enum": values}),
        Rule::Number { min, max, decimals } => {
            let mut schema = json!({"type": "number", "minimum": min, "maximum": max});
            if decimals == Some(1) {
                schema["multipleOf"] = json!(0.1);
            }
            schema
        }
        Rule::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Rule::Boolean => json!({"type": "boolean"}),
        Rule::Identifier => json!({"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}),
        Rule::Url { .. } => json!({"type": "string", "format": "uri", "maxLength": 2048}),
        Rule::Image => {
            json!({"type": "string", "description": "An http(s) URL, or raw Base64 of a JPG or PNG (no data: prefix), at most 10 MB."})
        }
        Rule::CameraControl => json!({
            "type": "object", "additionalProperties": false, "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["simple", "down_back", "forward_up", "right_turn_forward", "left_turn_forward"]},
                "config": {"type": "object", "additionalProperties": false, "properties": {
                    "horizontal": {"type": "number", "minimum": -10, "maximum": 10},
                    "vertical": {"type": "number", "minimum": -10, "maximum": 10},
                    "pan": {"type": "number", "minimum": -10, "maximum": 10},
                    "tilt": {"type": "number", "minimum": -10, "maximum": 10},
                    "roll": {"type": "number", "minimum": -10, "maximum": 10},
                    "zoom": {"type": "number", "minimum": -10, "maximum": 10},
                }},
            },
        }),
        Rule::VoiceList { max } => json!({"type": "array", "minItems": 1, "maxItems": max, "items": {
            "type": "object", "additionalProperties": false, "required": ["voice_id"],
            "properties": {"voice_id": {"type": "string", "minLength": 1, "maxLength": 128}}}}),
        Rule::ElementList { max } => json!({"type": "array", "minItems": 1, "maxItems": max, "items": {
            "type": "object", "additionalProperties": false, "required": ["element_id"],
            "properties": {"element_id": {"type": "integer", "minimum": 0}}}}),
        Rule::DynamicMasks { max } => json!({"type": "array", "minItems": 1, "maxItems": max, "items": {
        "type": "object", "additionalProperties": false, "required": ["mask", "trajectories"],
        "properties": {
            "mask": {"type": "string"},
            "trajectories": {"type": "array", "minItems": 2, "maxItems": 77, "items": {
                "type": "object", "additionalProperties": false, "required": ["x", "y"],
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}}},
        }}}),
        Rule::MultiPrompt => json!({"type": "array", "minItems": 1, "maxItems": 6, "items": {
        "type": "object", "additionalProperties": false, "required": ["index", "prompt", "duration"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "prompt": {"type": "string", "minLength": 1, "maxLength": 512},
            "duration": {"type": "string", "pattern": "^(1[0-5]|[1-9])$"},
        }}}),
        Rule::Watermark => json!({"type": "object", "additionalProperties": false, "required": ["enabled"],
            "properties": {"enabled": {"type": "boolean"}}}),
    }
}

fn field_schema(field: &Field) -> Value {
    let mut schema = rule_schema(field.rule);
    let note = match field.target {
        Target::Edge => " Kept by the worker, not sent to Kling.",
        _ => "",
    };
    let described = match schema.get("description").and_then(Value::as_str) {
        Some(existing) => format!("{} {existing}{note}", field.doc),
        None => format!("{}{note}", field.doc),
    };
    schema["description"] = Value::String(described);
    schema
}

fn check_text(check: &Check) -> String {
    match check {
        Check::ExactlyOne(names) => format!("Exactly one of {}.", names.join(", ")),
        Check::AtLeastOne(names) => format!("At least one of {}.", names.join(", ")),
        Check::Exclusive(groups) => {
            let all: Vec<String> = groups.iter().map(|group| group.join("/")).collect();
            format!("At most one of {}.", all.join(", "))
        }
        Check::SoundModels(models) => format!("sound \"on\" only with model_name {}.", models.join(" or ")),
        Check::SoundNeedsPro(model) => format!("sound \"on\" with {model} needs mode pro."),
        Check::VoiceNeedsSound => "A voice (voice_list, or <<<voice_N>>> in the prompt) needs sound \"on\".".to_owned(),
        Check::CfgScaleNotFor(prefixes) => format!("No cfg_scale with {} models.", prefixes.join("/")),
        Check::VideoDurationByModel(models) => {
            format!("duration \"5\" or \"10\"; \"3\" to \"15\" only with {}.", models.join(", "))
        }
        Check::PromptUnlessCustomShots => "prompt is required unless multi_shot is true with shot_type customize.".to_owned(),
        Check::MultiShot => "multi_shot needs shot_type; shot_type customize needs multi_prompt; no image_tail with multi_shot.".to_owned(),
        Check::NotTrue(name, why) => format!("{name} {why}."),
    }
}

fn body_schema(surface: &Surface) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in surface.body.fields {
        properties.insert(field.name.to_owned(), field_schema(field));
        if field.required {
            required.push(Value::String(field.name.to_owned()));
        }
    }
    for name in surface.body.ignored {
        properties.insert(
            (*name).to_owned(),
            json!({"description": "Sent by Kling's own clients, but not taken by Kling here: accepted, dropped, and named in the X-Kling-Edge-Ignored header."}),
        );
    }
    let rules: Vec<String> = surface.body.checks.iter().map(check_text).collect();
    let mut description = format!(
        "{}. Unknown fields are refused (a near miss of a field is named: did you mean ...?); null counts as absent. Kling's endpoint: POST {}.",
        surface.summary, surface.endpoint.kling_path
    );
    if !rules.is_empty() {
        description.push_str(&format!(" Rules across fields: {}", rules.join(" ")));
    }
    let mut schema = json!({
        "type": "object",
        "additionalProperties": false,
        "description": description,
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    schema
}

fn request_id_header() -> Value {
    json!({"X-Request-Id": {"description": "The request id, also in the body's request_id.", "schema": {"type": "string"}, "required": true}})
}

fn refs(codes: &[&str]) -> Map<String, Value> {
    codes
        .iter()
        .map(|code| (code.to_string(), json!({"$ref": format!("#/components/responses/Error{code}")})))
        .collect()
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
        "headers": request_id_header(),
    })
}

/// The `Idempotency-Key` header of every create (`crate::flows::idempotency`).
fn idempotency_parameter() -> Value {
    json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {
        "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        "description": "Makes a retry safe: a create with a key your client used in the last 24 hours answers what the first answered (with Idempotent-Replayed: true) and never reaches Kling again. Keys are your own (per client, and per browser user). The same key with another body answers 422; while the first create is still on its way, 409 with Retry-After. Without a key, nothing changes."})
}

/// What a create with an `Idempotency-Key` may answer besides a create's answers.
fn idempotency_responses(error: impl Fn(&str) -> Value) -> [(&'static str, Value); 2] {
    [
        ("409", error("A request with this Idempotency-Key is still under way (a create on its way to Kling, or an upload): retry after Retry-After seconds for its answer. Nothing is made twice.")),
        ("422", error("This Idempotency-Key was used with another body (for an upload, another type or length) in the last 24 hours.")),
    ]
}

fn envelope_error(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
           "headers": request_id_header()})
}

fn kling_collection(surface: &Surface, schema_name: &str) -> Value {
    let suffix = operation_suffix(surface);
    let mut create_responses = refs(&["400", "401", "403", "413", "429", "500", "502", "503", "504"]);
    create_responses.insert("200".into(), ok("Kling accepted the task.", "CreateAnswer"));
    for (code, response) in idempotency_responses(envelope_error) {
        create_responses.insert(code.into(), response);
    }
    create_responses.insert(
        "default".into(),
        json!({"description": "Kling's own error, passed through unchanged.",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}),
    );
    let mut list_responses = refs(&["400", "401", "429", "500", "503"]);
    list_responses.insert("200".into(), ok("A page of the caller's tasks.", "TaskListAnswer"));
    let mut item = json!({
        "post": {
            "operationId": format!("create{suffix}"),
            "summary": surface.summary,
            "description": format!(
                "Validated in full before anything is sent to Kling ({} upstream). The worker gives Kling its own callback URL; the client's callback_url receives the finished task, signed (Standard Webhooks). When the Kling account runs all the tasks it can, the create is accepted and waits in line at the edge (its answer has the worker's task id and a queue object) instead of failing with 1303; past QUEUE_MAX_PER_TENANT waiting creates, 429. A create that would take the caller past its credit budget for the day (CREDIT_BUDGETS, or a browser token's budget) is refused with 429 and Retry-After until 00:00 UTC, before Kling. Kling's other errors (any status) are passed through unchanged.",
                surface.endpoint.kling_path
            ),
            "parameters": [idempotency_parameter()],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}},
            "responses": create_responses,
        },
    });
    if surface.queries {
        item["get"] = json!({
            "operationId": format!("list{suffix}"),
            "summary": "The caller's own tasks of this endpoint, newest first",
            "parameters": [
                {"name": "pageNum", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1}},
                {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 30}},
            ],
            "responses": list_responses,
        });
    }
    item
}

fn task_id_parameter() -> Value {
    json!({"name": "task_id", "in": "path", "required": true, "schema": {
        "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$",
        "description": "The task id or your external task id: 1 to 64 letters, digits, '-', '_', '.' or ':'"}})
}

fn kling_query(surface: &Surface) -> Value {
    let mut responses = refs(&["400", "401", "404", "429", "500", "503"]);
    responses.insert("200".into(), ok("The task, in Kling's shape.", "TaskAnswer"));
    json!({"get": {
        "operationId": format!("query{}", operation_suffix(surface)),
        "summary": "One task, by task id or external task id",
        "description": "A finished task is answered from the edge copy without calling Kling or its coordinator; a running one by its coordinator, which asks Kling (by task id) when the task has been quiet. Another client's task answers 404 exactly like a missing one.",
        "parameters": [task_id_parameter()],
        "responses": responses,
    }})
}

/// What a cancel does, on every surface that has it.
const CANCEL_DESCRIPTION: &str = "A create still waiting in line at the edge for a free Kling slot (its task has a queue object) leaves the line: it ends failed, its task_status_msg saying it was cancelled, it never reaches Kling and costs nothing, and its webhook is sent. A task Kling already has answers 409 (Kling cannot cancel a task); another client's task answers 404.";

fn kling_cancel(surface: &Surface) -> Value {
    let mut responses = refs(&["400", "401", "404", "409", "429", "500", "503"]);
    responses.insert("200".into(), ok("The task, cancelled (failed).", "TaskAnswer"));
    json!({"post": {
        "operationId": format!("cancel{}", operation_suffix(surface)),
        "summary": "Cancel a create still waiting for a free Kling slot",
        "description": CANCEL_DESCRIPTION,
        "parameters": [task_id_parameter()],
        "responses": responses,
    }})
}

fn useapi_error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UseApiError"}}},
           "headers": request_id_header()})
}

fn useapi_responses(success: &str) -> Map<String, Value> {
    let mut responses = Map::new();
    responses.insert("200".into(), ok(success, "UseApiAnswer"));
    for (code, text) in [
        ("400", "The request breaks a rule; nothing was sent to Kling."),
        ("401", "Unauthorized."),
        ("403", "Not allowed for this credential."),
        ("404", "No such task for this client."),
        ("413", "The body is too large."),
        ("429", "Over a rate limit, or over maxJobs running tasks."),
        ("500", "The deployment is misconfigured, or Kling refused the input (moderation)."),
        ("502", "Kling could not be reached."),
        ("503", "The task coordinator is unavailable; retry shortly."),
        ("504", "Kling did not answer in time."),
    ] {
        responses.insert(code.into(), useapi_error(text));
    }
    responses.insert("default".into(), useapi_error("Kling's own error, in useapi's shape."));
    responses
}

fn useapi_create(surface: &Surface, schema_name: &str) -> Value {
    let mut responses = useapi_responses("The task, as useapi.net reports a new one.");
    for (code, response) in idempotency_responses(useapi_error) {
        responses.insert(code.into(), response);
    }
    json!({"post": {
        "operationId": "addSound",
        "summary": surface.summary,
        "description": "useapi.net's add-sound call, on the deployment's own Kling account: video becomes Kling's video_url under the same rules; replyUrl receives the finished job (signed like every forwarded webhook) with replyRef as given. The body may also be multipart/form-data: the same fields as text parts, and video either as a URL or as the file itself, which is stored and measured as an upload (POST /v1/assets) first. Answers and errors come in useapi's shapes.",
        "requestBody": {"required": true, "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["video"],
                "properties": {"video": {"description": "A URL, or the video file itself (a part with a filename).", "type": "string"}},
                "additionalProperties": {"type": "string", "description": "The other fields, as text (true/false, whole numbers as digits)."},
            }},
        }},
        "parameters": [idempotency_parameter()],
        "responses": responses,
    }})
}

fn useapi_task() -> Value {
    let mut responses = useapi_responses("The task, as useapi.net reports it.");
    responses.remove("413");
    let mut cancel_responses = useapi_responses("The task, cancelled, as useapi.net reports it.");
    cancel_responses.remove("413");
    cancel_responses
        .insert("409".into(), useapi_error("Kling already has the task, and Kling cannot cancel a task."));
    json!({
        "get": {
            "operationId": "useapiTask",
            "summary": "One add-sound task, useapi.net's way",
            "parameters": [task_id_parameter()],
            "responses": responses,
        },
        "delete": {
            "operationId": "useapiCancel",
            "summary": "Cancel an add-sound create still waiting for a free Kling slot",
            "description": CANCEL_DESCRIPTION,
            "parameters": [task_id_parameter()],
            "responses": cancel_responses,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `public/openapi.json` is this module's output (set UPDATE_OPENAPI=1 to rewrite it).
    #[test]
    fn the_published_document_is_generated_from_the_tables() {
        let generated = document();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/public/openapi.json");
        let text = format!("{}\n", serde_json::to_string_pretty(&generated).unwrap());
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let published: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(published == generated, "public/openapi.json is stale: run `make openapi`");
    }

    #[test]
    fn every_surface_and_rule_is_documented() {
        let document = document();
        for surface in SURFACES {
            assert!(document["paths"].get(surface.path).is_some(), "{}", surface.path);
            let schema = &document["components"]["schemas"][schema_name(surface)];
            for field in surface.body.fields {
                assert!(schema["properties"].get(field.name).is_some(), "{} {}", surface.path, field.name);
            }
        }
        let prompt = &document["components"]["schemas"]["TextToAudioCreate"]["properties"]["prompt"];
        assert_eq!(prompt["maxLength"], 200);
        assert_eq!(document["components"]["schemas"]["AddSoundCreate"]["required"], json!(["video"]));
        assert!(document["paths"]["/v1/videos/text2video/{task_id}"]["get"].is_object());
    }
}
