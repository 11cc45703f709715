//! What an operator does from a page or a script: `POST /v1/runs/{run}/abort`,
//! `POST /v1/hosts/{host}/tickets` (issue a ticket from a plan stored in the state
//! folder's `plans/`).
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

/// The plans stored in the state folder (`plans/NAME.toml`), by name.
pub fn stored_plans(state: &crate::state::State) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state.root.join("plans")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_suffix(".toml")?.to_string();
            crate::state::check_name(&n, "plan").ok().map(|()| n)
        })
        .collect();
    out.sort();
    out
}

/// `POST /v1/hosts/{host}/tickets` (form: `plan` = a stored plan's name, optional
/// `ttl`): issues a ticket for the host, reporting to this coordinator as the
/// request reached it; 303 to the new run's page (or 201 with its id).
pub fn issue(ctx: &Ctx, rq: &mut Request, host: &str) -> Reply {
    let f = form(rq)?;
    let c = operator(ctx, rq, field(&f, "csrf"))?;
    let host = percent(host);
    let plan = field(&f, "plan").unwrap_or("");
    crate::state::check_name(plan, "plan").map_err(|e| Refusal::new(400, format!("{e:#}")))?;
    let path = ctx.state.root.join("plans").join(format!("{plan}.toml"));
    if !path.is_file() {
        return Err(Refusal::new(
            404,
            format!("no stored plan {plan} (plans/{plan}.toml)"),
        ));
    }
    let ttl = crate::units::parse_duration(field(&f, "ttl").unwrap_or("24h"))
        .map_err(|e| Refusal::new(400, format!("ttl: {e}")))?;
    let base = super::base_url(rq, ctx.addr);
    let issued = crate::ticket::issue(&ctx.state, &path, &host, ttl, Some(&base))
        .map_err(|e| Refusal::new(422, format!("{e:#}")))?;
    log::info!(
        "run {}: plan {plan} issued for host {host} by {}",
        issued.run,
        c.who().name
    );
    if wants_page(rq) {
        return done(rq, &format!("/runs/{}", issued.run), String::new());
    }
    Ok(text(
        201,
        format!("{}\n", issued.run),
        "text/plain; charset=utf-8",
    ))
}

/// A path segment with `%XX` escapes decoded (host names are plain words).
fn percent(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `POST /v1/hosts/{host}/power` (form: `action` = status, on, off, cycle or pxe):
/// the same call as `host power`; 200 with its one line (or 303 back to the fleet
/// page), 502 naming the BMC when it fails, 409 for a host without power control.
pub fn power(ctx: &Ctx, rq: &mut Request, host: &str) -> Reply {
    let f = form(rq)?;
    let c = operator(ctx, rq, field(&f, "csrf"))?;
    let name = percent(host);
    let action: crate::power::Action = field(&f, "action")
        .unwrap_or("")
        .parse()
        .map_err(|e: String| Refusal::new(400, e))?;
    let hosts = ctx
        .index
        .hosts()
        .map_err(|e| Refusal::new(500, format!("{e:#}")))?;
    let Some(h) = hosts.hosts.get(&name) else {
        return Err(Refusal::new(404, format!("no host {name}")));
    };
    if h.power.is_none() {
        return Err(Refusal::new(
            409,
            format!("host {name} has no power control"),
        ));
    }
    log::info!("host {name}: power {} by {}", action.as_str(), c.who().name);
    match crate::power::act_on_host(&ctx.state, h, action) {
        Ok((answer, took)) => {
            let state = answer.state.map(|s| format!("{s}: ")).unwrap_or_default();
            let line = format!(
                "{name} {}: {state}{} ({} ms)",
                action.as_str(),
                if answer.text.is_empty() {
                    "done"
                } else {
                    &answer.text
                },
                took.as_millis()
            );
            done(rq, "/", crate::power::one_line(&line))
        }
        Err(e) => Err(Refusal::new(
            502,
            format!("host {name} {}: {e}", action.as_str()),
        )),
    }
}

/// `POST /v1/runs/{run}/release|retry|approve`: an operator's order to a held run
/// (forms: `reboot=1` for release; `stage` for retry; `stage` and `disk` for
/// approve), the same call as `run release|retry|approve`, recorded as made by the
/// caller; 409 when the run is not held (or names no such stage).
pub fn order(ctx: &Ctx, rq: &mut Request, run: &RunId, what: &str) -> Reply {
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    let f = form(rq)?;
    let c = operator(ctx, rq, field(&f, "csrf"))?;
    let need = |k: &str| {
        field(&f, k)
            .map(str::to_string)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Refusal::new(400, format!("{what} needs {k}=")))
    };
    let req = match what {
        "release" => crate::orders::Request::Release {
            reboot: matches!(field(&f, "reboot"), Some("1" | "true" | "on")),
        },
        "retry" => crate::orders::Request::Retry {
            stage: need("stage")?,
        },
        _ => crate::orders::Request::Approve {
            stage: need("stage")?,
            serial: need("disk")?,
        },
    };
    let by = match &c {
        Caller::Session(..) => format!("operator {} (web)", c.who().name),
        Caller::Token(i) => format!("token {}", i.name),
    };
    let words = crate::orders::request_by(&ctx.state, &rd, ctx.ingest.key(), &req, &by)
        .map_err(|e| Refusal::new(409, format!("{e:#}")))?;
    log::info!("run {run}: {words} requested by {}", c.who().name);
    done(
        rq,
        &format!("/runs/{run}"),
        format!("{words} requested for run {run}: the agent gets it with its next heartbeat"),
    )
}
