//! `import BUNDLE`: check a whole offline result bundle, then feed it through ingest.
//!
//! Nothing is written unless every record of the bundle checks out (each batch by the
//! same check as online ingest, against what the run already holds), so a tampered,
//! truncated or misordered bundle leaves the state folder as it was. Importing twice
//! changes nothing.
use anyhow::{Context, Result, bail};
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, Event, PublicKey, RecordReader, ResultRecord, Sha256, SignedTicket, Ticket,
};
use std::collections::BTreeSet;
use std::fs;

use super::Ingester;
use crate::cli::ImportCmd;
use crate::state::State;
use crate::store::{RunDir, files};

/// A bundle that passed every check.
struct Checked {
    ticket: SignedTicket,
    parsed: Ticket,
    batches: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
    frames: u64,
}

/// `import BUNDLE`.
pub fn cmd_import(state: &State, c: &ImportCmd) -> Result<i32> {
    let bytes = fs::read(&c.bundle).with_context(|| format!("reading {}", c.bundle.display()))?;
    let ingester = Ingester::new(state)?;
    let b = check(&bytes, ingester.key()).context("bundle refused, nothing imported")?;
    let run = b.parsed.run;
    let rd = RunDir::new(state, run);
    let file = b.ticket.to_file();
    match fs::read(rd.path(files::TICKET)) {
        Ok(stored) if stored == file => {}
        Ok(_) => bail!("bundle refused, nothing imported: run {run} holds a different ticket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("reading the stored ticket"),
    }
    // Blobs go into the CAS only once every batch has been accepted.
    let cas = state.cas();
    let upto = ingester
        .import(&b.parsed, &file, &b.batches, || {
            b.blobs.iter().try_for_each(|blob| cas.put(blob).map(drop))
        })
        .map_err(|r| {
            if r.status >= 500 {
                anyhow::anyhow!("importing run {run}: {r}")
            } else {
                anyhow::anyhow!("bundle refused, nothing imported: run {run}: {r}")
            }
        })?;
    println!(
        "imported run {run} ({}): {} frames in the bundle, {upto} stored, {} artifacts",
        b.parsed.plan.name,
        b.frames,
        b.blobs.len()
    );
    Ok(0)
}

/// The bundle check of `import` with nothing written: `Ok(frames)` for a bundle
/// `import` would go on with. For the fuzz targets in `fuzz/`; not a stable API.
#[doc(hidden)]
pub fn check_for_fuzzing(bytes: &[u8], key: &PublicKey) -> Result<u64> {
    check(bytes, key).map(|c| c.frames)
}

/// Checks magic, every record, the ticket, and that blobs and Artifact frames match
/// one to one. The batches themselves are checked by [`Ingester::import`].
fn check(bytes: &[u8], key: &PublicKey) -> Result<Checked> {
    if bytes.len() < BUNDLE_MAGIC.len() || bytes[..7] != BUNDLE_MAGIC[..7] {
        bail!("not a kiln result bundle (bad magic)");
    }
    if bytes[7] != BUNDLE_MAGIC[7] {
        bail!("unsupported bundle format version {}", bytes[7]);
    }
    let mut reader = RecordReader::new(&bytes[8..]);
    let mut records = Vec::new();
    for (i, rec) in reader.by_ref().enumerate() {
        let payload = rec.map_err(|e| anyhow::anyhow!("record {i}: {e}"))?;
        records
            .push(ResultRecord::decode(&payload).map_err(|e| anyhow::anyhow!("record {i}: {e}"))?);
    }
    if reader.torn_tail() > 0 {
        bail!(
            "bundle is truncated ({} bytes of a torn last record)",
            reader.torn_tail()
        );
    }
    let mut it = records.into_iter();
    let Some(ResultRecord::Ticket(ticket)) = it.next() else {
        bail!("the first record of a bundle must be its ticket");
    };
    let parsed = ticket
        .verify(std::slice::from_ref(key))
        .map_err(|e| anyhow::anyhow!("ticket: {e}"))?;
    let (mut batches, mut blobs) = (Vec::new(), Vec::new());
    for r in it {
        match r {
            ResultRecord::Ticket(_) => bail!("a bundle holds one ticket"),
            ResultRecord::Batch(b) => batches.push(b),
            ResultRecord::Blob(b) => blobs.push(b),
        }
    }
    // Seqs, claim, signatures and stages are checked batch by batch against the
    // stored run by the same check as online ingest; here only what a bundle adds.
    let (mut named, mut frames) = (BTreeSet::new(), 0u64);
    for (i, sealed) in batches.iter().enumerate() {
        let (batch, _) =
            Batch::open_unverified(sealed).map_err(|e| anyhow::anyhow!("batch {}: {e}", i + 1))?;
        for f in &batch.frames {
            frames = frames.max(f.seq);
            if let Event::Artifact { sha256, .. } = &f.event {
                named.insert(*sha256);
            }
        }
    }
    let held: BTreeSet<Sha256> = blobs.iter().map(|b| Sha256::of(b)).collect();
    if let Some(missing) = named.difference(&held).next() {
        bail!("artifact {missing} is named by a frame but missing from the bundle");
    }
    if let Some(extra) = held.difference(&named).next() {
        bail!("blob {extra} is not named by any Artifact frame");
    }
    Ok(Checked {
        ticket,
        parsed,
        batches,
        blobs,
        frames,
    })
}
