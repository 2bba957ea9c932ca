//! The sgswitch configuration directory: schema, loading and validation.
//!
//! - [`model`]: the validated configuration ([`Config`], [`Port`], [`Group`],
//!   [`Rule`], [`PrefixList`], [`Host`]) and the small value types they use.
//! - [`load_dir`]: reads `host.toml`, `ports/`, `groups/` and `prefix-lists/`
//!   (layout and keys in `shared/design/interfaces.md`), and returns either a
//!   [`Config`] or every error found, each naming file, line and column.
//! - `reader`: the error-collecting walker over the toml crate's spanned
//!   document tree (private).
//!
//! # Contract
//! A `Config` that loaded is internally consistent: references resolve, limits
//! hold, rule fields agree with their protocol and IP family. Consumers
//! (`filter`, `vswitch`) do not re-validate.
#![forbid(unsafe_code)]

mod error;
mod fleet;
mod load;
pub mod model;
mod reader;

pub use error::{ConfigError, ConfigErrors};
pub use fleet::{OtherHosts, parse_remote_port, read_remote_port};
pub use load::{LocalFiles, Stamp, file_stamps, load_dir, load_dir_reusing, load_dir_with, load_host, parse_cidr};
pub use model::*;
