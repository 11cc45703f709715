//! `/v1` routes: tickets, event batches, secrets, run JSON (uploads: `artifacts.rs`).
use kiln_protocol::{MAX_BATCH_BYTES, Mac, RunId, SecretsRequest};
use std::collections::BTreeSet;
use tiny_http::Request;

use super::{Ctx, Reply, hdr, read_body, text};
use crate::fsutil::now_ms;
use crate::ingest::{Mode, Refusal};
use crate::store::{RunDir, files};

const OCTETS: &str = "application/octet-stream";
const JSON: &str = "application/json";
/// Largest secrets request body.
const MAX_SECRETS_REQUEST: usize = 64 * 1024;
/// A secrets request older (or newer) than this is refused.
const SECRETS_WINDOW_MS: u64 = 5 * 60 * 1000;

fn internal(e: anyhow::Error) -> Refusal {
    Refusal::new(500, format!("{e:#}"))
}

fn existing(ctx: &Ctx, run: &RunId) -> Result<RunDir, Refusal> {
    let rd = RunDir::new(&ctx.state, *run);
    if rd.exists() {
        Ok(rd)
    } else {
        Err(Refusal::new(404, format!("no run {run}")))
    }
}

/// Rows in a `GET /v1/runs` page without `limit=`.
pub const DEFAULT_PAGE: usize = 100;

/// `GET /v1/runs[?limit=N][&cursor=RUN]`: a page of run summaries, newest first,
/// JSON; the next (older) page's address in a `Link: <…>; rel="next"` header.
pub fn list_runs(ctx: &Ctx, query: &str) -> Reply {
    let (limit, before) = page_params(query)?;
    let page = ctx.index.page(limit, before.as_ref()).map_err(|e| {
        if before.is_some_and(|b| !ctx.index.has(&b)) {
            Refusal::new(400, format!("{e:#}"))
        } else {
            internal(e)
        }
    })?;
    let body = serde_json::to_string_pretty(&page.rows).expect("summaries always encode");
    let mut resp = text(200, crate::visible::json_safe(body), JSON);
    if let Some(next) = page.next {
        resp.add_header(hdr(
            "Link",
            &format!("</v1/runs?limit={limit}&cursor={next}>; rel=\"next\""),
        ));
    }
    resp.add_header(hdr("Kiln-Total-Runs", &page.total.to_string()));
    Ok(resp)
}

/// `limit=` (1 to [`crate::index::MAX_PAGE`], default [`DEFAULT_PAGE`]) and
/// `cursor=` (the last run id of the previous page) of a listing.
pub(super) fn page_params(query: &str) -> Result<(usize, Option<RunId>), Refusal> {
    let limit = match super::param(query, "limit") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::index::MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Refusal::new(
                    400,
                    format!("limit must be 1 to {}", crate::index::MAX_PAGE),
                )
            })?,
    };
    let before = match super::param(query, "cursor") {
        None => None,
        Some(v) => Some(
            v.parse::<RunId>()
                .map_err(|_| Refusal::new(400, "cursor must be a run id"))?,
        ),
    };
    Ok((limit, before))
}

/// `GET /v1/runs/{run}`: the run's status, JSON.
pub fn show_run(ctx: &Ctx, run: &RunId) -> Reply {
    let rd = existing(ctx, run)?;
    let s = crate::status::current(&rd, ctx.ingest.key()).map_err(internal)?;
    Ok(text(200, crate::status::to_json(&s), JSON))
}

/// `GET /v1/runs/{run}/ticket`: the ticket file.
pub fn run_ticket(ctx: &Ctx, run: &RunId) -> Reply {
    let rd = existing(ctx, run)?;
    let bytes = std::fs::read(rd.path(files::TICKET)).map_err(|e| internal(e.into()))?;
    Ok(text(200, bytes, OCTETS))
}

/// `GET /v1/hosts/{mac}/ticket`: the host's oldest pending ticket.
pub fn host_ticket(ctx: &Ctx, mac: &str) -> Reply {
    let mac: Mac = mac
        .replace("%3A", ":")
        .replace("%3a", ":")
        .parse()
        .map_err(|_| Refusal::new(400, "invalid MAC address"))?;
    let next = ctx.index.next_pending(&mac).map_err(internal)?;
    let Some(run) = next else {
        return Err(Refusal::new(404, format!("no pending ticket for {mac}")));
    };
    let bytes = std::fs::read(RunDir::new(&ctx.state, run).path(files::TICKET))
        .map_err(|e| internal(e.into()))?;
    let mut resp = text(200, bytes, OCTETS);
    resp.add_header(hdr("Kiln-Run", &run.to_string()));
    Ok(resp)
}

/// `POST /v1/runs/{run}/events`: a sealed batch → a sealed ack (signed by the
/// coordinator key for the run's bound claim key).
pub fn post_events(ctx: &Ctx, rq: &mut Request, run: &RunId) -> Reply {
    // 404 for an unknown run, 409 for a broken ticket, before any body byte is read.
    let before = ctx.ingest.view(run)?;
    let from = crate::claims::Source::Net(
        *rq.remote_addr()
            .ok_or_else(|| Refusal::new(400, "request has no peer address"))?,
    );
    let body = read_body(rq, MAX_BATCH_BYTES)?;
    let ack = ctx.ingest.ingest(run, &body, Mode::Online, from)?;
    // A bound claim never changes; the first batch binds it.
    let claim = match before.claim {
        Some(k) => k,
        None => ctx.ingest.view(run)?.claim.ok_or_else(|| {
            Refusal::internal(anyhow::anyhow!(
                "run {run}: acked a batch but no claim is bound"
            ))
        })?,
    };
    Ok(text(200, ack.seal(&ctx.signer, &claim), OCTETS))
}

/// `POST /v1/runs/{run}/secrets`: a request signed by the run's claim key →
/// postcard(Vec<(name, value)>), for names the run's plan lists.
pub fn post_secrets(ctx: &Ctx, rq: &mut Request, run: &RunId) -> Reply {
    // Every check that needs no body comes before the body is read.
    let view = ctx.ingest.view(run)?;
    let rd = existing(ctx, run)?;
    let (_, ticket) = rd.ticket(ctx.ingest.key()).map_err(internal)?;
    let Some(bound) = view.claim else {
        return Err(Refusal::new(409, format!("run {run} is not claimed")));
    };
    if view.finished {
        return Err(Refusal::new(409, format!("run {run} has finished")));
    }
    let body = read_body(rq, MAX_SECRETS_REQUEST)?;
    let req = SecretsRequest::open(&body, &bound).map_err(|e| match e {
        kiln_protocol::Error::BadSignature => Refusal::new(403, "bad request signature"),
        e => Refusal::new(400, format!("malformed secrets request: {e}")),
    })?;
    if req.run != *run {
        return Err(Refusal::new(400, format!("request is for run {}", req.run)));
    }
    let now = now_ms();
    if now.saturating_sub(req.at_ms) > SECRETS_WINDOW_MS
        || req.at_ms.saturating_sub(now) > SECRETS_WINDOW_MS
    {
        return Err(Refusal::new(
            403,
            "secrets request is more than 5 minutes off the coordinator's clock",
        ));
    }
    let named: BTreeSet<&str> = ticket
        .plan
        .stages
        .iter()
        .flat_map(|s| s.secrets.iter().map(String::as_str))
        .collect();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for name in &req.names {
        if !named.contains(name.as_str()) {
            return Err(Refusal::new(
                403,
                format!("secret {name:?} is not named by the run's plan"),
            ));
        }
        let value = ctx
            .state
            .secret(name)
            .map_err(|_| Refusal::new(404, format!("secret {name:?} is not set")))?;
        out.push((name.clone(), value));
    }
    log::info!("run {run}: handed out secrets {:?}", req.names);
    let bytes = postcard::to_allocvec(&out).expect("secrets always encode");
    Ok(text(200, bytes, OCTETS))
}
