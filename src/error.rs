//! The one error type of the library: every failure a user can cause (bad weights, bad
//! settings, a lost device) ends up here with a message that says what to fix.

use thiserror::Error;

/// Everything that can go wrong in `disa`, with a message meant for the person at the keyboard.
#[derive(Debug, Error)]
pub enum DisaError {
    /// A generation or schedule setting is out of range (e.g. `end > start`, `K < 1`).
    #[error("invalid setting: {0}")]
    InvalidSetting(String),

    /// A weight file could not be parsed at all (truncated, wrong format, bad header).
    #[error("cannot read weight file {source_name}: {reason}")]
    WeightFormat { source_name: String, reason: String },

    /// A tensor the model needs is not in the weight file.
    #[error("weight file {source_name} lacks tensor `{key}`{hint}")]
    MissingTensor {
        source_name: String,
        key: String,
        hint: String,
    },

    /// A tensor has another shape than the model configuration needs.
    #[error("tensor `{key}` has shape {found:?}, the model needs {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor holds NaN or infinite values.
    #[error("tensor `{key}` contains non-finite values (NaN or Inf): the file is corrupt")]
    NonFinite { key: String },

    /// A model configuration is inconsistent (sizes that do not divide, an empty grid), cannot
    /// be derived from or does not fit the weights, or does not fit the use (no decoder).
    #[error("model configuration: {0}")]
    Config(String),

    /// A file other than a weight file cannot be decoded: a configuration JSON, a training
    /// checkpoint's state or manifest, quantized tensor bytes.
    #[error("malformed data: {0}")]
    Format(String),

    /// An invariant of disa itself broke: a bug, never the user's input.
    #[error("internal error (a bug in disa; please report it): {0}")]
    Internal(String),

    /// Recorded random draws do not match what the sampler asks for (replay only).
    #[error("replayed random draws out of step: {0}")]
    Replay(String),

    /// The model computed NaN or infinite values (weights that overflow, e.g. a huge but finite
    /// weight): the result would be garbage, so it is refused.
    #[error(
        "the model produced non-finite values (NaN or Inf) {0}: its weights overflow (a huge \
         weight?) and the images would be garbage"
    )]
    NonFiniteOutput(String),

    /// The compute device failed (lost GPU, failed read-back).
    #[error("device error: {0}")]
    Device(String),

    /// A dataset file is malformed (wrong magic, truncated, inconsistent counts).
    #[error("dataset {source_name}: {reason}")]
    Dataset { source_name: String, reason: String },

    /// The caller stopped a step part-way (the page's cancel); the generation cannot go on.
    #[error("cancelled")]
    Cancelled,

    /// File system errors, with the path that failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = DisaError> = std::result::Result<T, E>;

/// Builds an [`DisaError::InvalidSetting`] from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::DisaError::InvalidSetting(format!($($arg)*)) };
}
pub(crate) use invalid;
