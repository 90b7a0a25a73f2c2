//! The exception hierarchy: `PxbError`, and one subclass per kind of [`pxb_core::Error`], with the
//! message the CLI prints for the same error.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};

create_exception!(
    pxb,
    PxbError,
    PyException,
    "Any error of pxb; `str()` is the message the CLI prints."
);
create_exception!(pxb, NotFound, PxbError, "What was asked for does not exist.");
create_exception!(
    pxb,
    AlreadyExists,
    PxbError,
    "What was to be made exists already."
);
create_exception!(
    pxb,
    Precondition,
    PxbError,
    "The object changed since it was read (a conflict)."
);
create_exception!(
    pxb,
    Unauthenticated,
    PxbError,
    "No valid credential (missing, expired or refused)."
);
create_exception!(
    pxb,
    PermissionDenied,
    PxbError,
    "The credential is valid but not allowed this."
);
create_exception!(pxb, Throttled, PxbError, "Too many requests: retry later.");
create_exception!(
    pxb,
    Unavailable,
    PxbError,
    "A service could not be reached or did not answer in time."
);
create_exception!(pxb, Invalid, PxbError, "The input is not valid.");
create_exception!(pxb, Corrupt, PxbError, "Stored data failed its integrity check.");
create_exception!(pxb, IoError, PxbError, "A local file operation failed.");

/// The Python exception of `e`, with the message the CLI prints (`e`'s display).
pub fn to_py(e: pxb_core::Error) -> PyErr {
    use pxb_core::Error as E;
    let message = e.to_string();
    match e {
        E::NotFound { .. } => NotFound::new_err(message),
        E::AlreadyExists { .. } => AlreadyExists::new_err(message),
        E::Precondition { .. } => Precondition::new_err(message),
        E::Unauthenticated { .. } => Unauthenticated::new_err(message),
        E::PermissionDenied { .. } => PermissionDenied::new_err(message),
        E::Throttled { .. } => Throttled::new_err(message),
        E::Unavailable { .. } => Unavailable::new_err(message),
        E::Invalid { .. } => Invalid::new_err(message),
        E::Corrupt { .. } => Corrupt::new_err(message),
        E::Io { .. } => IoError::new_err(message),
        _ => PxbError::new_err(message),
    }
}

/// `Result<T, pxb_core::Error>` as a Python result.
pub trait IntoPy<T> {
    /// The value, or the Python exception of the error.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for pxb_core::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PxbError", py.get_type::<PxbError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("Precondition", py.get_type::<Precondition>())?;
    m.add("Unauthenticated", py.get_type::<Unauthenticated>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("Throttled", py.get_type::<Throttled>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("Invalid", py.get_type::<Invalid>())?;
    m.add("Corrupt", py.get_type::<Corrupt>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    Ok(())
}
