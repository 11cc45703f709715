//! Frames the agent reports, the signed batches that carry them, and acks.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::{BATCH_DOMAIN, Error, Mac, PublicKey, RunId, SecretKey, Sha256, Sig};

/// One numbered event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// 1, 2, 3, … per run, without gaps; the coordinator dedupes by it.
    pub seq: u64,
    /// Milliseconds since the unix epoch on the agent's clock (corrected by the
    /// coordinator's `Date` offset where the agent saw one).
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

/// What a frame reports. New variants are appended, never inserted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// First frame of a run: the agent's ephemeral report key, bound by the coordinator.
    Claim {
        /// ed25519 public key that signs every batch of this run.
        agent_key: PublicKey,
        /// The agent's version string.
        agent_version: String,
        /// Identifies one agent process start (resumes keep the key, change this).
        boot_id: String,
    },
    /// The machine the agent runs on.
    Hello {
        /// Hostname.
        hostname: String,
        /// MACs of its network interfaces.
        macs: Vec<Mac>,
        /// DMI product serial, if readable.
        serial: Option<String>,
    },
    /// An attempt of a stage began.
    StageStarted {
        /// Index into the plan's stages.
        stage: u16,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// One line of output (without its newline).
    Log {
        /// Index into the plan's stages.
        stage: u16,
        /// Where the line came from.
        stream: Stream,
        /// The line, secrets redacted.
        text: String,
    },
    /// A named measurement.
    Measure {
        /// Index into the plan's stages.
        stage: u16,
        /// Dotted name such as `disk.nvme0n1.temperature`.
        name: String,
        /// The value.
        value: f64,
        /// Unit such as `C`, `MiB/s`, `ops/s`.
        unit: String,
    },
    /// A file the stage produced, stored in the CAS (or the bundle) by digest.
    Artifact {
        /// Index into the plan's stages.
        stage: u16,
        /// Relative path of the file in the stage's artifacts folder.
        name: String,
        /// Digest of its bytes.
        sha256: Sha256,
        /// Its size in bytes.
        size: u64,
    },
    /// An attempt of a stage ended.
    StageFinished {
        /// Index into the plan's stages.
        stage: u16,
        /// Which attempt.
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// The process's exit code, where there was one.
        exit_code: Option<i32>,
        /// Wall time of the attempt.
        duration_ms: u64,
        /// One line for people: why, in a few words.
        detail: String,
    },
    /// The run ended; no frames follow.
    RunFinished {
        /// The folded outcome of all stages.
        outcome: Outcome,
    },
    /// A part of a stage ended: a matrix cell, a disk, a spec difference.
    Part {
        /// Index into the plan's stages.
        stage: u16,
        /// The part's name (`debian:12`, `/dev/sdb`).
        name: String,
        /// How it ended.
        outcome: Outcome,
        /// One line for people.
        detail: String,
        /// The part's last lines of output, kept for the report.
        tail: Vec<String>,
    },
    /// The run's stages are done and the machine is held for a person (the plan's
    /// `hold`): it waits for `Release`, `RetryStage` or `Approve` until `until_ms`,
    /// then ends the run by itself. `RunFinished` follows the hold, not this frame.
    Held {
        /// The folded outcome of the stages so far.
        outcome: Outcome,
        /// When the hold ends by itself (ms since the unix epoch, the agent's clock
        /// as corrected for frames).
        until_ms: u64,
        /// The machine's IP addresses (no loopback), as `ssh root@ADDR` takes them.
        addrs: Vec<String>,
        /// The SSH server's host key fingerprint (`SHA256:…`, as `ssh` prints it);
        /// `None` where the agent started no SSH server (`kiln-agent run --hold`).
        host_key: Option<String>,
    },
    /// A command from the coordinator as the agent took it: what it was, and why it
    /// was refused (`None`: carried out; its effect follows as frames).
    Order {
        /// The command in words (`release`, `retry stage "disk"`, `approve disk SN1`).
        what: String,
        /// The one-line reason it was refused.
        refused: Option<String>,
    },
}

impl Event {
    /// The stage index the event belongs to, if any.
    pub fn stage(&self) -> Option<u16> {
        match self {
            Event::StageStarted { stage, .. }
            | Event::Log { stage, .. }
            | Event::Measure { stage, .. }
            | Event::Artifact { stage, .. }
            | Event::StageFinished { stage, .. }
            | Event::Part { stage, .. } => Some(*stage),
            _ => None,
        }
    }
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
    /// The agent itself (progress, reasons).
    Agent,
}

/// How a stage, part or run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Exit 0.
    Passed,
    /// Exit 42: passed, with something to look at.
    Warning,
    /// Exit 43: the test decided not to run.
    Skipped,
    /// Any other non-zero exit: the test's verdict.
    Failed,
    /// Ran past its timeout and was killed.
    TimedOut,
    /// Infrastructure: could not start, lost, bad artifact. Never the test's fault.
    Error,
    /// Stopped on request.
    Aborted,
    /// A safety gate refused to run it (disk untouched).
    Held,
}

impl Outcome {
    /// Every outcome, mildest first.
    pub const ALL: [Outcome; 8] = [
        Outcome::Passed,
        Outcome::Skipped,
        Outcome::Warning,
        Outcome::Held,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Error,
        Outcome::Aborted,
    ];

    /// The lowercase name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Warning => "warning",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
            Outcome::Held => "held",
        }
    }

    /// Parses [`Outcome::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcome of a process exit code (42 warning, 43 skipped).
    pub fn from_exit(code: i32) -> Outcome {
        match code {
            0 => Outcome::Passed,
            crate::EXIT_WARNING => Outcome::Warning,
            crate::EXIT_SKIPPED => Outcome::Skipped,
            _ => Outcome::Failed,
        }
    }

    /// Passed, warning or skipped: nothing for `fail_fast` to stop on.
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Warning | Outcome::Skipped)
    }

    fn rank(self) -> usize {
        Outcome::ALL
            .iter()
            .position(|o| *o == self)
            .expect("ALL lists every outcome")
    }

    /// The worse of two outcomes (how a run folds its stages).
    pub fn worst(self, other: Outcome) -> Outcome {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// The agent's exit status for a run that ended so: 0 passed, warning or skipped;
    /// 1 failed, timed out, held or aborted; 3 error.
    pub fn exit_status(self) -> i32 {
        match self {
            Outcome::Passed | Outcome::Warning | Outcome::Skipped => 0,
            Outcome::Failed | Outcome::TimedOut | Outcome::Held | Outcome::Aborted => 1,
            Outcome::Error => 3,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frames of one run, signed as a unit by the agent's claim key.
///
/// Wire: `postcard(Batch) ++ sig[64]`, the signature over `BATCH_DOMAIN ++ postcard(Batch)`.
/// An empty batch is the heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The run the frames belong to.
    pub run: RunId,
    /// Consecutive frames, lowest seq first.
    pub frames: Vec<Frame>,
}

impl Batch {
    /// Encodes and signs: the bytes to POST or to store in a bundle.
    pub fn seal(&self, key: &SecretKey) -> Vec<u8> {
        let mut out = postcard::to_allocvec(self).expect("batches always encode");
        let sig = key.sign(BATCH_DOMAIN, &out);
        out.extend_from_slice(&sig.0);
        out
    }

    /// Decodes a sealed batch without checking its signature; returns the batch and
    /// a checker that verifies it against a key. The coordinator needs the frames
    /// first to find the `Claim` that names the key.
    pub fn open_unverified(bytes: &[u8]) -> Result<(Batch, SealedCheck<'_>), Error> {
        if bytes.len() < 64 {
            return Err(Error::Truncated);
        }
        let (body, sig) = bytes.split_at(bytes.len() - 64);
        let (batch, rest) = postcard::take_from_bytes::<Batch>(body)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        let mut s = [0u8; 64];
        s.copy_from_slice(sig);
        Ok((batch, SealedCheck { body, sig: Sig(s) }))
    }

    /// Decodes and verifies a sealed batch against `key`.
    pub fn open(bytes: &[u8], key: &PublicKey) -> Result<Batch, Error> {
        let (batch, check) = Batch::open_unverified(bytes)?;
        check.verify(key)?;
        Ok(batch)
    }

    /// The claim key named by this batch's `Claim` frame, if it has one.
    pub fn claim_key(&self) -> Option<PublicKey> {
        self.frames.iter().find_map(|f| match &f.event {
            Event::Claim { agent_key, .. } => Some(*agent_key),
            _ => None,
        })
    }
}

/// The signed bytes and signature of a sealed batch, to check once the key is known.
#[derive(Debug, Clone, Copy)]
pub struct SealedCheck<'a> {
    body: &'a [u8],
    sig: Sig,
}

impl SealedCheck<'_> {
    /// Verifies the batch's signature.
    pub fn verify(&self, key: &PublicKey) -> Result<(), Error> {
        key.verify(BATCH_DOMAIN, self.body, &self.sig)
    }
}

/// The coordinator's answer to a batch, signed by the coordinator key.
///
/// Wire (the body of a 200 to a batch): `postcard(Ack) ++ sig[64]`, the signature by
/// the coordinator key over `ACK_DOMAIN ++ claim_key[32] ++ postcard(Ack)`, where
/// `claim_key` is the run's bound claim key (the key that signed the acked batch): an
/// ack is good for one run and one claimant only, and nobody but the coordinator can
/// make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The run the acked frames belong to.
    pub run: RunId,
    /// Every frame with `seq <= upto` is durably stored.
    pub upto: u64,
    /// What the agent must do now.
    pub command: Command,
}

impl Ack {
    /// Encodes and signs with the coordinator key for the run's bound `claim` key.
    pub fn seal(&self, key: &SecretKey, claim: &PublicKey) -> Vec<u8> {
        let mut out = postcard::to_allocvec(self).expect("acks always encode");
        let sig = key.sign(crate::ACK_DOMAIN, &ack_message(claim, &out));
        out.extend_from_slice(&sig.0);
        out
    }

    /// Verifies a sealed ack against the coordinator key and this agent's `claim`
    /// key, then decodes it (no trailing bytes). The caller still checks `run` and
    /// that `upto` names no frame it never sent.
    pub fn open(bytes: &[u8], coordinator: &PublicKey, claim: &PublicKey) -> Result<Ack, Error> {
        if bytes.len() < 64 {
            return Err(Error::Truncated);
        }
        let (body, sig) = bytes.split_at(bytes.len() - 64);
        let mut s = [0u8; 64];
        s.copy_from_slice(sig);
        coordinator.verify(crate::ACK_DOMAIN, &ack_message(claim, body), &Sig(s))?;
        let (ack, rest) = postcard::take_from_bytes::<Ack>(body)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(ack)
    }
}

/// What an ack's signature covers after the domain: the claim key, then the body.
fn ack_message(claim: &PublicKey, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + body.len());
    m.extend_from_slice(&claim.0);
    m.extend_from_slice(body);
    m
}

/// An order carried by an ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Carry on.
    Continue,
    /// Kill the running stage and end the run as aborted.
    Abort {
        /// Why, for people.
        reason: String,
    },
    /// Power off after the final frame.
    Shutdown,
    /// Run this stage once more (sent to a held run): a new attempt, then the hold
    /// again if it still applies.
    RetryStage {
        /// Index into the plan's stages.
        stage: u16,
    },
    /// End a held run: `RunFinished`, then power off (or reboot) in boot mode, exit in
    /// run mode.
    Release {
        /// Reboot instead of powering off.
        reboot: bool,
    },
    /// Allow one disk past the storage wipe gate and re-run the stage (sent to a held
    /// run); the agent checks the approval itself.
    Approve(Approval),
}

/// An operator's override of the storage wipe gate for one disk of one stage of one
/// run, signed by the coordinator key over `APPROVAL_DOMAIN ++ postcard(run, stage,
/// serial)`. The agent refuses one for another run, stage or disk, or not signed by
/// the key that signed its ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The run.
    pub run: RunId,
    /// Index into the plan's stages (a storage stage).
    pub stage: u16,
    /// The disk's serial number.
    pub serial: String,
    /// The coordinator key's signature.
    pub sig: Sig,
}

impl Approval {
    fn message(run: &RunId, stage: u16, serial: &str) -> Vec<u8> {
        postcard::to_allocvec(&(run, stage, serial)).expect("approvals always encode")
    }

    /// Signs an approval with `key`.
    pub fn sign(run: RunId, stage: u16, serial: &str, key: &SecretKey) -> Approval {
        let sig = key.sign(
            crate::APPROVAL_DOMAIN,
            &Approval::message(&run, stage, serial),
        );
        Approval {
            run,
            stage,
            serial: serial.into(),
            sig,
        }
    }

    /// Verifies the signature against `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), Error> {
        key.verify(
            crate::APPROVAL_DOMAIN,
            &Approval::message(&self.run, self.stage, &self.serial),
            &self.sig,
        )
    }
}

/// A claimed agent's request for the secrets its plan names, signed with its claim
/// key over `SECRETS_DOMAIN ++ postcard(SecretsRequest)`; wire: `body ++ sig[64]`.
/// The reply (200) is `postcard(Vec<(String, Vec<u8>)>)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsRequest {
    /// The run.
    pub run: RunId,
    /// Secret names (each must be named by a stage of the run's plan).
    pub names: Vec<String>,
    /// Agent clock, unix milliseconds (the coordinator refuses stale requests).
    pub at_ms: u64,
}

impl SecretsRequest {
    /// Encodes and signs.
    pub fn seal(&self, key: &SecretKey) -> Vec<u8> {
        let mut out = postcard::to_allocvec(self).expect("requests always encode");
        let sig = key.sign(crate::SECRETS_DOMAIN, &out);
        out.extend_from_slice(&sig.0);
        out
    }

    /// Decodes and verifies against the run's bound claim key.
    pub fn open(bytes: &[u8], key: &PublicKey) -> Result<SecretsRequest, Error> {
        if bytes.len() < 64 {
            return Err(Error::Truncated);
        }
        let (body, sig) = bytes.split_at(bytes.len() - 64);
        let mut s = [0u8; 64];
        s.copy_from_slice(sig);
        key.verify(crate::SECRETS_DOMAIN, body, &Sig(s))?;
        let (req, rest) = postcard::take_from_bytes::<SecretsRequest>(body)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(req)
    }
}
