//! `leasehold ui`: a live web dashboard of the registry.
//!
//! One page (`/`) shows every service with its instance count and each instance's
//! address, id, zone, weight, version, metadata, age and state (live, stale, drained).
//! It updates itself from server-sent events (`/events`), each carrying the whole state
//! as JSON (also at `/api/state`): the registry is followed by one discovery cache per
//! service, and the state is sent again only when it changed. Drain and undrain buttons
//! post to `/api/drain/{service}/{id}` and `/api/undrain/{service}/{id}`; they are
//! refused unless the command was started with `--allow-writes`, and every post must
//! carry the header `x-leasehold-ui` (which a cross-site form cannot set). `/metrics`
//! serves the process's metrics in Prometheus text format.

mod board;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use leasehold::{InstanceId, Registry, ServiceName};
use serde_json::json;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use crate::cli::UiArgs;
use crate::error::{CliError, Context};
use crate::metrics_server;
use crate::signal::Shutdown;

pub use board::Board;

/// The header every write must carry.
const WRITE_HEADER: &str = "x-leasehold-ui";

/// Serves the dashboard until SIGINT or SIGTERM.
pub async fn run(registry: Arc<dyn Registry>, args: &UiArgs) -> Result<(), CliError> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let metrics = metrics_server::handle()?;
    let board = Board::start(registry.clone(), args.allow_writes);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .context(format_args!("listening on {}", args.listen))?;
    let bound = listener.local_addr().context("reading the dashboard address")?;
    if !bound.ip().is_loopback() {
        let what = if args.allow_writes {
            "sees the registry and can drain its instances"
        } else {
            "sees the registry"
        };
        eprintln!("leasehold: warning: serving on {bound}, not loopback: anyone who can reach it {what}");
    }
    println!("dashboard at http://{bound}/");
    let app = routes(board).merge(metrics_server::routes(metrics));
    tokio::select! {
        served = axum::serve(listener, app) => served.context("serving the dashboard")?,
        signal = shutdown.recv() => println!("dashboard: {signal}: stopping"),
    }
    registry.shutdown().await;
    Ok(())
}

fn routes(board: Arc<Board>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .route("/api/drain/{service}/{id}", post(drain))
        .route("/api/undrain/{service}/{id}", post(undrain))
        .with_state(board)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn state(State(board): State<Arc<Board>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        board.state().as_str().to_owned(),
    )
        .into_response()
}

async fn events(State(board): State<Arc<Board>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let states = WatchStream::new(board.states()).map(|state| Ok(Event::default().data(state.as_str())));
    Sse::new(states).keep_alive(KeepAlive::default())
}

async fn drain(board: State<Arc<Board>>, path: Path<(String, String)>, headers: HeaderMap) -> Response {
    write(board, path, headers, true).await
}

async fn undrain(board: State<Arc<Board>>, path: Path<(String, String)>, headers: HeaderMap) -> Response {
    write(board, path, headers, false).await
}

async fn write(
    State(board): State<Arc<Board>>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
    drain: bool,
) -> Response {
    let refuse =
        |status: StatusCode, error: String| (status, Json(json!({ "error": error }))).into_response();
    if !board.allow_writes() {
        return refuse(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only: start it with --allow-writes to drain and undrain".into(),
        );
    }
    if !headers.contains_key(WRITE_HEADER) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("a write needs the {WRITE_HEADER} header"),
        );
    }
    let (service, id) = match (ServiceName::new(&service), InstanceId::new(&id)) {
        (Ok(service), Ok(id)) => (service, id),
        (Err(e), _) | (_, Err(e)) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match board.set_drained(&service, &id, drain).await {
        Ok(found) => Json(json!({ "drained": drain, "found": found })).into_response(),
        Err(e) if e.is_unsupported() => refuse(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        Err(e) if e.is_invalid_input() => refuse(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
