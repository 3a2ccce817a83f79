use thiserror::Error;

/// Errors of the controller's I/O.
#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("charging account {account}: {source}")]
    Charge {
        account: String,
        #[source]
        source: kube::Error,
    },
    #[error("the account writer has stopped")]
    AccountWriterGone,
    #[error("task {0} has no account to charge")]
    NoAccount(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Charge { .. } => "charge",
            Error::AccountWriterGone => "shutdown",
            Error::NoAccount(_) => "no_account",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// True for an API error with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
