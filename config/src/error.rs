use std::fmt;
use std::path::PathBuf;

/// One problem in one configuration file, at a line and column.
///
/// Displays as `path:line:col: message`, the form editors and CI logs link.
/// `line` and `col` are 0 when the problem is the file as a whole (a file
/// that cannot be read).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.msg)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.col, self.msg)
        }
    }
}

/// Every error found while loading a directory, in file order then position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
