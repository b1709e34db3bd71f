//! The browser demo (`/demo/`): static files compiled into the binary, so
//! there is no build step and nothing to deploy next to the server.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../static/index.html");
const APP: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/style.css");
/// The JavaScript SDK the demo is built on, served beside it.
const SDK: &str = include_str!("../../clients/js/switchboard.js");

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo/") }))
        .route("/demo", get(|| async { Redirect::temporary("/demo/") }))
        .route(
            "/demo/",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
            }),
        )
        .route(
            "/demo/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP,
                )
                    .into_response()
            }),
        )
        .route(
            "/demo/switchboard.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SDK,
                )
                    .into_response()
            }),
        )
        .route(
            "/demo/style.css",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
            }),
        )
}
