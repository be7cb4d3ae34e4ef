//! The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json`. It is not kept by
//! hand: `routes` registers every route through utoipa-axum's `routes!`, which takes each
//! handler's `#[utoipa::path]` (method, path, parameters, answers) and the schemas of the
//! types the handler answers with (`schema.rs`), so a route cannot exist without its entry.
//! What every route may answer whatever it does (the front door's 401, 413, 414, 429, 431,
//! a removed node's 410, and the cluster's 503/504) is added to each operation here, once.

use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::schema::{Consistency, ErrorBody, Flag};
use crate::state::ApiState;
use crate::{auth_routes, cluster, kv, lease, membership, ops, txn, watch};

/// The statuses any route may answer, whatever it does, and why.
const EVERY_ROUTE_ANSWERS: &[(&str, &str)] = &[
    (
        "400",
        "invalid_argument: a malformed parameter, header or body",
    ),
    (
        "401",
        "unauthenticated: no, or an unknown, bearer token (nodes with --auth)",
    ),
    (
        "403",
        "permission_denied: the token's role does not allow it",
    ),
    ("408", "request_timeout: the body did not arrive in time"),
    (
        "410",
        "removed: this node left the cluster; the message names members to ask",
    ),
    ("413", "too_large: a body, key or value over its limit"),
    ("414", "too_large: the request line is over its limit"),
    (
        "429",
        "overloaded: too many requests in flight; retry after Retry-After",
    ),
    ("431", "too_large: the headers are over their limit"),
    (
        "503",
        "unavailable: no leader, or this node cannot serve now; retry",
    ),
    (
        "504",
        "timeout: no answer within the node's request timeout",
    ),
];

/// Routes served without a token even with `--auth` (`auth::is_public`).
const PUBLIC_PATHS: &[&str] = &["/health", "/ready", "/v1/openapi.json"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mirrorkv",
        description = "A replicated key-value store: every node holds a full mirror, accepts reads and writes, and each read chooses its consistency level.",
        license(name = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, Consistency, Flag)),
    modifiers(&EveryRoute),
)]
struct ApiDoc;

struct EveryRoute;

impl Modify for EveryRoute {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Add what every route may answer, and its security, to `operation` at `path`.
fn complete(path: &str, operation: &mut Operation) {
    for (status, description) in EVERY_ROUTE_ANSWERS {
        if operation.responses.responses.contains_key(*status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(*description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        (operation.responses.responses).insert(status.to_string(), response.into());
    }
    if !PUBLIC_PATHS.contains(&path) {
        let bearer =
            utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new());
        // Either a token or none: nodes without --auth take requests without one.
        operation.security = Some(vec![
            bearer,
            utoipa::openapi::security::SecurityRequirement::default(),
        ]);
    }
}

/// Integers here are unsigned 64-bit: utoipa writes `u64` as `int64` with `minimum: 0`, which
/// a reader takes as at most 2^63 - 1; `uint64` says what the server takes.
fn unsigned(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("format").and_then(|f| f.as_str()) == Some("int64")
                && map.get("minimum").and_then(|m| m.as_u64()).is_some()
            {
                map.insert("format".into(), "uint64".into());
            }
            map.values_mut().for_each(unsigned);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned),
        _ => {}
    }
}

/// The document as served.
pub fn spec_json() -> serde_json::Value {
    let mut json = serde_json::to_value(spec()).unwrap_or_default();
    unsigned(&mut json);
    json
}

/// The finished document of `routes`. Axum's catch-all `{*key}` is OpenAPI's `{key}`.
pub fn finish(mut document: Document) -> Document {
    let paths = std::mem::take(&mut document.paths.paths);
    for (path, mut item) in paths {
        let path = path.replace("{*", "{");
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            complete(&path, operation);
        }
        document.paths.paths.insert(path, item);
    }
    document
}

/// Every route of the API, each with its entry in the document.
pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(kv::get_key, kv::put_key, kv::delete_key))
        .routes(routes!(kv::empty_key))
        .routes(routes!(kv::range))
        .routes(routes!(txn::txn))
        .routes(routes!(watch::watch))
        .routes(routes!(lease::grant))
        .routes(routes!(lease::get, lease::revoke))
        .routes(routes!(lease::keepalive))
        .routes(routes!(cluster::cluster))
        .routes(routes!(membership::add_member))
        .routes(routes!(membership::promote_member))
        .routes(routes!(membership::remove_member))
        .routes(routes!(auth_routes::list_roles))
        .routes(routes!(auth_routes::put_role, auth_routes::delete_role))
        .routes(routes!(auth_routes::list_tokens, auth_routes::create_token))
        .routes(routes!(auth_routes::delete_token))
        .routes(routes!(ops::snapshot))
        .routes(routes!(ops::backup))
        .routes(routes!(ops::metrics))
        .routes(routes!(cluster::health))
        .routes(routes!(cluster::ready))
        .routes(routes!(document))
}

/// The whole document, as served.
pub fn spec() -> Document {
    finish(routes().split_for_parts().1)
}

/// The served bytes, made on the first request.
static SPEC_JSON: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(serde_json::to_vec(&spec_json()).unwrap_or_default()));

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
)]
pub async fn document() -> Response {
    let content_type = [(axum::http::header::CONTENT_TYPE, "application/json")];
    (content_type, SPEC_JSON.clone()).into_response()
}
