//! The OpenAPI document lacks no route: every route of the router is registered through
//! utoipa-axum's `routes!` (which adds its entry), no route is added any other way, and every
//! route the contract (`shared/API.md`) names is in the document with its method.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn document() -> Value {
    mirrorkv_api::openapi::spec_json()
}

/// `(METHOD, path)` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "patch", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

#[test]
fn every_route_of_the_contract_is_in_the_document() {
    let contract =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/API.md"))
            .expect("shared/API.md next to the repository");
    let in_document = operations(&document());
    let mut named = BTreeSet::new();
    for word in contract.split(['`', '\n', '(', ')', ',']) {
        let mut parts = word.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !["GET", "PUT", "POST", "DELETE"].contains(&method) || !path.starts_with('/') {
            continue;
        }
        let path = path.split(['?', ' ']).next().unwrap_or(path);
        named.insert((method.to_string(), path.to_string()));
    }
    assert!(named.len() >= 20, "the contract names routes: {named:?}");
    let missing: Vec<_> = named.difference(&in_document).collect();
    assert!(
        missing.is_empty(),
        "routes of the contract missing from the document: {missing:?}"
    );
}

#[test]
fn no_route_is_added_outside_the_document() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).expect("api/src") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        for forbidden in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
            ".fallback(",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} calls {forbidden}: a route added that way is not in /v1/openapi.json; register it with routes! in openapi.rs",
                path.display()
            );
        }
    }
}

#[test]
fn the_document_is_openapi_3_1_with_the_error_shapes() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let operations = operations(&document);
    assert!(operations.len() >= 27, "{operations:?}");
    for (method, path) in &operations {
        let answers = &document["paths"][path][method.to_lowercase()]["responses"];
        for status in ["401", "413", "414", "429", "431", "503"] {
            assert_eq!(
                answers[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} answers {status}"
            );
        }
    }
    for path in [
        "/v1/auth/roles/{name}",
        "/v1/auth/tokens",
        "/v1/kv/{key}",
        "/v1/openapi.json",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path}");
    }
    // u64 parameters are not limited to 2^63 - 1.
    let min_index = &document["paths"]["/v1/kv"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "min_index")
        .expect("min_index")["schema"];
    assert_eq!(min_index["format"], "uint64", "{min_index}");
}
