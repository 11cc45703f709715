//! What an operator does from a page or a script: `POST /v1/runs/{run}/abort`.
//! The same domain calls as the command line; the caller's name goes with the
//! request into the run's record.
use kiln_protocol::RunId;
use tiny_http::{Request, Response, StatusCode};

use super::login::{Caller, field, form, operator};
use super::{Ctx, Reply, hdr, header, text};
use crate::ingest::Refusal;
use crate::store::RunDir;

/// Whether the answer goes to a browser (a form post: back to the page) or a
/// script (a line of text).
fn wants_page(rq: &Request) -> bool {
    header(rq, "Accept").is_some_and(|a| a.contains("text/html"))
}

fn done(rq: &Request, back: &str, what: String) -> Reply {
    if wants_page(rq) {
        return Ok(Response::from_data(Vec::new())
            .with_status_code(StatusCode(303))
            .with_header(hdr("Location", back))
            .boxed());
    }
    Ok(text(200, format!("{what}\n"), "text/plain; charset=utf-8"))
}

/// `POST /v1/runs/{run}/abort` (form: `reason`, and `csrf` from a page).
pub fn abort(ctx: &Ctx, rq: &mut Request, run: &RunId) -> Reply {
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    let f = form(rq)?;
    let c = operator(ctx, rq, field(&f, "csrf"))?;
    let reason = field(&f, "reason").unwrap_or("").trim();
    let reason = if reason.is_empty() {
        "aborted from the page"
    } else {
        reason
    };
    let by = match &c {
        Caller::Session(..) => format!("{} (by {})", reason, c.who().name),
        Caller::Token(i) => format!("{} (by token {})", reason, i.name),
    };
    crate::store::request_abort(&rd, ctx.ingest.key(), &by)
        .map_err(|e| Refusal::new(409, format!("{e:#}")))?;
    log::info!("run {run}: abort requested by {}", c.who().name);
    done(
        rq,
        &format!("/runs/{run}"),
        format!("abort of run {run} requested"),
    )
}
