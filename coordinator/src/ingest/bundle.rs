//! `import BUNDLE`: check a whole offline result bundle, then feed it through ingest.
//!
//! Nothing is written unless every record of the bundle checks out, so a tampered or
//! truncated bundle leaves the state folder as it was. Importing twice changes nothing.
use anyhow::{Context, Result, bail};
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, Event, PublicKey, RecordReader, ResultRecord, Sha256, SignedTicket, Ticket,
};
use std::collections::BTreeSet;
use std::fs;

use super::{Ingester, Mode};
use crate::cli::ImportCmd;
use crate::fsutil::write_atomic;
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
    let claim = claim_of(&b.batches)?;
    if let Some(bound) = rd.claim_key()?
        && Some(bound) != claim
    {
        bail!("bundle refused, nothing imported: run already claimed by another agent key");
    }
    if !rd.exists() {
        write_atomic(&rd.path(files::TICKET), &file, 0o644)?;
    }
    let cas = state.cas();
    for blob in &b.blobs {
        cas.put(blob)?;
    }
    let mut upto = 0;
    for batch in &b.batches {
        let ack = ingester
            .ingest(&run, batch, Mode::Import)
            .map_err(|r| anyhow::anyhow!("run {run}: {r}"))?;
        upto = ack.upto;
    }
    println!(
        "imported run {run} ({}): {} frames in the bundle, {upto} stored, {} artifacts",
        b.parsed.plan.name,
        b.frames,
        b.blobs.len()
    );
    Ok(0)
}

/// The claim key the bundle's first batch names.
fn claim_of(batches: &[Vec<u8>]) -> Result<Option<PublicKey>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let (b, _) = Batch::open_unverified(first).map_err(|e| anyhow::anyhow!("batch 1: {e}"))?;
    Ok(b.claim_key())
}

/// Checks magic, every record, the ticket, every batch signature and seq, and that
/// blobs and Artifact frames match one to one.
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
    let stages = parsed.plan.stages.len();
    let (mut claim, mut upto, mut finished) = (None::<PublicKey>, 0u64, false);
    let mut named = BTreeSet::new();
    for (i, sealed) in batches.iter().enumerate() {
        let n = i + 1;
        let (batch, sig) =
            Batch::open_unverified(sealed).map_err(|e| anyhow::anyhow!("batch {n}: {e}"))?;
        if batch.run != parsed.run {
            bail!("batch {n} is for run {}, not {}", batch.run, parsed.run);
        }
        let k = match claim {
            Some(k) => k,
            None => match batch.frames.first().map(|f| (f.seq, &f.event)) {
                Some((1, Event::Claim { agent_key, .. })) => *agent_key,
                _ => bail!("batch {n}: the first frame must be a Claim with seq 1"),
            },
        };
        sig.verify(&k)
            .map_err(|_| anyhow::anyhow!("batch {n}: bad batch signature"))?;
        claim = Some(k);
        for f in &batch.frames {
            if f.seq <= upto {
                continue; // a resent frame: ingest drops it too
            }
            if f.seq != upto + 1 {
                bail!("batch {n}: seq gap: expected {}, found {}", upto + 1, f.seq);
            }
            if finished {
                bail!("batch {n}: frames after RunFinished");
            }
            upto = f.seq;
            match &f.event {
                Event::Claim { agent_key, .. } if *agent_key != k => {
                    bail!("batch {n}: a second Claim names another key")
                }
                Event::RunFinished { .. } => finished = true,
                Event::Artifact { sha256, .. } => {
                    named.insert(*sha256);
                }
                _ => {}
            }
            if let Some(s) = f.event.stage().filter(|s| *s as usize >= stages) {
                bail!("frame {} names stage {s}; the plan has {stages}", f.seq);
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
        frames: upto,
    })
}
