//! The size rule for tickets, one for both sides: the coordinator refuses to sign
//! what an agent would refuse to run, and the agent refuses what breaks the rule
//! whoever signed it.
//!
//! [`Ticket::check_limits`] applies every cap below to a ticket's content; each
//! refusal names the value and the cap (`plan name is 3145728 bytes, over the limit
//! of 128 (limits::MAX_NAME_LEN)`).
use alloc::format;
use alloc::string::String;

use crate::{ContainerSpec, Error, HostSpec, ImageRef, Plan, SshSpec, Stage, StageKind, Ticket};

/// Largest ticket file anyone should accept, in bytes.
pub const MAX_TICKET_BYTES: usize = 1 << 20;
/// Largest ticket body (the signed postcard bytes): the file less room for its magic,
/// key id, length prefix and signature (83 bytes at most).
pub const MAX_TICKET_BODY_BYTES: usize = MAX_TICKET_BYTES - 128;
/// Names, in bytes: the plan's, each stage's, the host's, secret names, environment
/// variable and matrix axis names.
pub const MAX_NAME_LEN: usize = 128;
/// Any other single string, in bytes: a command argument, an image reference, a
/// path, a host or user name, a pinned host key line, the coordinator URL.
pub const MAX_TEXT_LEN: usize = 4096;
/// An environment variable's value or a matrix axis value, in bytes.
pub const MAX_VALUE_LEN: usize = 32 * 1024;
/// Stages in a plan.
pub const MAX_STAGES: usize = 256;
/// Entries in any one list: command arguments, environment variables, secrets,
/// images, matrix axes and their values, capabilities, mounts, devices, MACs, disks,
/// NICs and GPUs of a host.
pub const MAX_LIST_LEN: usize = 1024;

fn text(what: &dyn Fn() -> String, s: &str, limit: usize, rule: &'static str) -> Result<(), Error> {
    if s.len() > limit {
        return Err(Error::TooLarge {
            what: format!("{} is {} bytes", what(), s.len()),
            limit,
            rule,
        });
    }
    Ok(())
}

fn list<T>(what: &dyn Fn() -> String, l: &[T]) -> Result<(), Error> {
    if l.len() > MAX_LIST_LEN {
        return Err(Error::TooLarge {
            what: format!("{} has {} entries", what(), l.len()),
            limit: MAX_LIST_LEN,
            rule: "MAX_LIST_LEN",
        });
    }
    Ok(())
}

fn name(what: &dyn Fn() -> String, s: &str) -> Result<(), Error> {
    text(what, s, MAX_NAME_LEN, "MAX_NAME_LEN")
}

fn long(what: &dyn Fn() -> String, s: &str) -> Result<(), Error> {
    text(what, s, MAX_TEXT_LEN, "MAX_TEXT_LEN")
}

fn opt(what: &dyn Fn() -> String, s: &Option<String>) -> Result<(), Error> {
    s.as_deref().map_or(Ok(()), |s| long(what, s))
}

fn texts(what: &dyn Fn() -> String, l: &[String]) -> Result<(), Error> {
    list(what, l)?;
    for (i, s) in l.iter().enumerate() {
        long(&|| format!("{} #{}", what(), i + 1), s)?;
    }
    Ok(())
}

impl Ticket {
    /// Refuses a ticket that breaks a cap of [this module](crate::limits): a string,
    /// a list, the stage count, or the encoded body size. The coordinator checks
    /// before signing, the agent after verifying.
    pub fn check_limits(&self) -> Result<(), Error> {
        long(
            &|| "coordinator URL".into(),
            self.coordinator.as_deref().unwrap_or(""),
        )?;
        let h = &self.host;
        name(&|| "host name".into(), &h.name)?;
        list(&|| "host MACs".into(), &h.macs)?;
        opt(&|| "host serial".into(), &h.serial)?;
        check_spec(&h.spec)?;
        self.plan.check_limits()?;
        let body = postcard::experimental::serialized_size(self).unwrap_or(usize::MAX);
        if body > MAX_TICKET_BODY_BYTES {
            return Err(Error::TooLarge {
                what: format!("ticket body is {body} bytes"),
                limit: MAX_TICKET_BODY_BYTES,
                rule: "MAX_TICKET_BODY_BYTES",
            });
        }
        Ok(())
    }
}

fn check_spec(s: &HostSpec) -> Result<(), Error> {
    opt(&|| "host spec cpu_model".into(), &s.cpu_model)?;
    list(&|| "host spec disks".into(), &s.disks)?;
    for (i, d) in s.disks.iter().enumerate() {
        let what = |k: &str| format!("host spec disk #{} {k}", i + 1);
        opt(&|| what("path"), &d.path)?;
        opt(&|| what("serial"), &d.serial)?;
        opt(&|| what("model"), &d.model)?;
    }
    list(&|| "host spec nics".into(), &s.nics)?;
    texts(&|| "host spec gpus".into(), &s.gpus)
}

impl Plan {
    /// The plan's part of [`Ticket::check_limits`] (the encoded size is the ticket's).
    pub fn check_limits(&self) -> Result<(), Error> {
        name(&|| "plan name".into(), &self.name)?;
        if self.stages.len() > MAX_STAGES {
            return Err(Error::TooLarge {
                what: format!("plan has {} stages", self.stages.len()),
                limit: MAX_STAGES,
                rule: "MAX_STAGES",
            });
        }
        for (i, s) in self.stages.iter().enumerate() {
            check_stage(i, s)?;
        }
        texts(&|| "hold keys".into(), &self.hold.keys)?;
        if self.hold.for_s > crate::MAX_HOLD_S {
            return Err(Error::TooLarge {
                what: format!("hold is {} s", self.hold.for_s),
                limit: crate::MAX_HOLD_S as usize,
                rule: "MAX_HOLD_S",
            });
        }
        Ok(())
    }
}

fn check_stage(i: usize, s: &Stage) -> Result<(), Error> {
    name(&|| format!("stage #{} name", i + 1), &s.name)?;
    let at = |what: &str| format!("stage {:?} {what}", short(&s.name));
    list(&|| at("env"), &s.env)?;
    for (k, v) in &s.env {
        name(&|| at("env name"), k)?;
        text(
            &|| at(&format!("env {}", short(k))),
            v,
            MAX_VALUE_LEN,
            "MAX_VALUE_LEN",
        )?;
    }
    list(&|| at("secrets"), &s.secrets)?;
    for n in &s.secrets {
        name(&|| at("secret name"), n)?;
    }
    match &s.kind {
        StageKind::Exec { command } => texts(&|| at("command"), command),
        StageKind::Container(c) => check_container(&at, c),
        StageKind::Ssh(ssh) => check_ssh(&at, ssh),
        StageKind::Smart(m) => texts(&|| at("devices"), &m.devices),
        StageKind::Storage(m) => texts(&|| at("devices"), &m.devices),
        StageKind::Network(n) => long(&|| at("server"), &n.server),
        StageKind::Inventory | StageKind::CpuStress(_) | StageKind::Gpu(_) => Ok(()),
    }
}

fn check_container(at: &dyn Fn(&str) -> String, c: &ContainerSpec) -> Result<(), Error> {
    list(&|| at("images"), &c.images)?;
    for img in &c.images {
        check_image(at, img)?;
    }
    list(&|| at("matrix"), &c.axes)?;
    for (axis, values) in &c.axes {
        name(&|| at("matrix axis name"), axis)?;
        let what = || at(&format!("matrix.{}", short(axis)));
        list(&what, values)?;
        for v in values {
            text(&what, v, MAX_VALUE_LEN, "MAX_VALUE_LEN")?;
        }
    }
    texts(&|| at("command"), &c.command)?;
    opt(&|| at("workdir"), &c.workdir)?;
    opt(&|| at("user"), &c.user)?;
    texts(&|| at("cap_add"), &c.cap_add)?;
    list(&|| at("mounts"), &c.mounts)?;
    for m in &c.mounts {
        long(&|| at("mount host path"), &m.host)?;
        long(&|| at("mount container path"), &m.container)?;
    }
    list(&|| at("services"), &c.services)?;
    for svc in &c.services {
        name(&|| at("service name"), &svc.name)?;
        let at = |what: &str| at(&format!("service {} {what}", short(&svc.name)));
        check_image(&at, &svc.image)?;
        texts(&|| at("command"), &svc.command)?;
        list(&|| at("env"), &svc.env)?;
        for (k, v) in &svc.env {
            name(&|| at("env name"), k)?;
            text(
                &|| at(&format!("env {}", short(k))),
                v,
                MAX_VALUE_LEN,
                "MAX_VALUE_LEN",
            )?;
        }
        list(&|| at("secrets"), &svc.secrets)?;
        for n in &svc.secrets {
            name(&|| at("secret name"), n)?;
        }
        if let Some(h) = &svc.health {
            texts(&|| at("health command"), &h.command)?;
        }
    }
    Ok(())
}

fn check_image(at: &dyn Fn(&str) -> String, img: &ImageRef) -> Result<(), Error> {
    match img {
        ImageRef::Registry(r) => long(&|| at("image"), r),
        ImageRef::Archive { name, .. } => long(&|| at("image name"), name),
        ImageRef::Build(b) => {
            long(&|| at("build"), &b.file)?;
            long(&|| at("context"), &b.context)?;
            list(&|| at("build_args"), &b.args)?;
            for (k, v) in &b.args {
                name(&|| at("build_args name"), k)?;
                text(
                    &|| at(&format!("build_args.{}", short(k))),
                    v,
                    MAX_VALUE_LEN,
                    "MAX_VALUE_LEN",
                )?;
            }
            Ok(())
        }
    }
}

fn check_ssh(at: &dyn Fn(&str) -> String, s: &SshSpec) -> Result<(), Error> {
    long(&|| at("host"), &s.host)?;
    long(&|| at("user"), &s.user)?;
    name(&|| at("key"), &s.key)?;
    opt(&|| at("host_key"), &s.host_key)?;
    if let Some(k) = &s.known_hosts {
        name(&|| at("known_hosts"), k)?;
    }
    opt(&|| at("base_dir"), &s.base_dir)
}

/// A name for an error message: at most 40 characters of it, so a refusal of a huge
/// name stays one short line.
fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => String::from(s),
    }
}
