//! The coordinator's own HTTP parsing: the router (paths, run ids, sha256s, MACs,
//! methods) and the headers its handlers read (`Range`, `If-None-Match`, `Host`),
//! driven in process through `route_for_fuzzing` with a lab behind it: a pending and
//! a claimed run, the fixture host, one CAS object. Request bodies are empty.
//!
//! Input: `METHOD \n PATH \n RANGE \n IF-NONE-MATCH \n HOST` (missing lines: no
//! header). The `Range` value is also checked directly against several lengths.
use kiln_coordinator::http::{Ctx, Range, parse_range, route_for_fuzzing};
use kiln_coordinator::ingest::Ingester;
use tiny_http::{Header, Method, TestRequest};

use crate::fixtures::{self, Lab};

/// The bytes of the lab's CAS object.
pub const BLOB: &[u8] = b"artifact bytes for range requests\n";

/// The target.
pub struct Http {
    _lab: Lab,
    ctx: Ctx,
    accepted: u64,
}

impl Http {
    /// Sets the target up.
    pub fn new() -> Self {
        let lab = Lab::new();
        lab.state.cas().put(BLOB).expect("cas put");
        let ctx = Ctx {
            state: lab.state.clone(),
            ingest: Ingester::new(&lab.state).expect("ingester"),
            artifact_cap: 1 << 20,
            run_quota: 4 << 20,
            uploads: Default::default(),
            addr: "127.0.0.1:7373".parse().expect("addr"),
            signer: fixtures::coordinator_key(),
            index: kiln_coordinator::index::Index::build(&lab.state, true)
                .expect("index")
                .0,
            sessions: Default::default(),
            public_read: true,
        };
        Http {
            _lab: lab,
            ctx,
            accepted: 0,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

/// `parse_range`'s promise: a part lies inside the object, start before end.
fn check_range(h: &str, len: u64) -> u64 {
    match parse_range(Some(h), len) {
        Range::Full => 1,
        Range::Unsatisfiable => 2,
        Range::Part(s, e) => {
            assert!(s <= e && e < len, "range {h:?} of {len} bytes gave {s}-{e}");
            3
        }
    }
}

impl crate::Target for Http {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.splitn(5, '\n');
        let method = lines.next().unwrap_or("GET");
        let method: Method = method.parse().unwrap_or(Method::Get);
        let path = lines.next().unwrap_or("/");
        let mut rq = TestRequest::new().with_method(method).with_path(path);
        let mut c = 0;
        for (name, value) in ["Range", "If-None-Match", "Host"].iter().zip(lines) {
            if *name == "Range" {
                for len in [0, 1, 2, BLOB.len() as u64, u64::MAX] {
                    c = c * 4 + check_range(value, len);
                }
            }
            if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                rq = rq.with_header(h);
            }
        }
        let mut rq: tiny_http::Request = rq.into();
        let status = route_for_fuzzing(&self.ctx, &mut rq);
        assert!((200..500).contains(&status), "{path:?} answered {status}");
        self.accepted += u64::from(status < 400);
        crate::stable_hash((status, c))
    }
}
