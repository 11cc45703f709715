//! The reporter: bounded queue, on-disk spool, batching, resend with backoff, acks; or an offline bundle.
