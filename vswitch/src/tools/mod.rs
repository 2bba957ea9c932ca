//! The pipeline put to other uses than a poll loop: `replay` over a
//! capture ([`replay`]), the datapath's verdict on a traced packet
//! ([`probe`]), and trace requests as `trace`, `trace --batch` and `ctl
//! trace` read them ([`request`]), both sides of a path for `diagnose` and
//! `ctl diagnose` ([`diagnose`]), groups to and from the providers'
//! formats ([`exchange`]), and what `lint` finds ([`lint`]).

pub mod diagnose;
pub mod exchange;
pub mod lint;
pub mod probe;
pub mod replay;
pub mod request;
