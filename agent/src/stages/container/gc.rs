//! What `keep_failed` kept: found by its [`KEEP_LABEL`] (valued with the stage's
//! name), removed by `kiln-agent gc` and, for one stage, by that stage's next run.
use super::args::KEEP_LABEL;
use super::engine::Engine;

/// Kept containers (stopped ones only: a running one belongs to a live run) and
/// networks, of `stage` or of every stage; removes them. Returns `(containers,
/// networks)` removed.
pub async fn remove_kept(engine: &Engine, stage: Option<&str>) -> (Vec<String>, Vec<String>) {
    let filter = match stage {
        Some(s) => format!("label={KEEP_LABEL}={s}"),
        None => format!("label={KEEP_LABEL}"),
    };
    let list = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        async move {
            engine
                .capture(&args)
                .await
                .map(|out| {
                    out.lines()
                        .map(str::to_string)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let mut containers = Vec::new();
    for status in ["exited", "created"] {
        let st = format!("status={status}");
        for c in list(vec![
            "ps",
            "-a",
            "--filter",
            &filter,
            "--filter",
            &st,
            "--format",
            "{{.Names}}",
        ])
        .await
        {
            if !containers.contains(&c) {
                containers.push(c);
            }
        }
    }
    engine.remove_all(&containers).await;
    let mut networks = Vec::new();
    for n in list(vec![
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ])
    .await
    {
        // A network still in use (a live run's) is refused by the engine and stays.
        if engine
            .capture(&["network".into(), "rm".into(), n.clone()])
            .await
            .is_ok()
        {
            networks.push(n);
        }
    }
    (containers, networks)
}
