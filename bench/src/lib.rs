//! What the measurement programs of tower-coalesce share: the fan-out
//! contenders (ours and its peers) and the figures' formatting.

pub mod fanout;
pub mod hit;

#[path = "../../examples/support/report.rs"]
pub mod report;
