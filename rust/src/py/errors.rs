//! Map the core's one error enum onto the exception classes of `modbatt.errors`.
//!
//! The classes are defined in Python (so they can mix in builtins and carry docstrings) and
//! looked up by name when an error is raised; raising is the rare path.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::{DropReason, Error};

/// The `modbatt.errors` class that stands for this error.
fn class_name(error: &Error) -> &'static str {
    match error {
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::KeyMaterial(_) => "KeyMaterialError",
        Error::SessionExpired(_) => "SessionExpiredError",
        Error::CounterExhausted => "CounterExhaustedError",
        Error::Rejected(reason, _) => match reason {
            DropReason::NoRoute => "NoRouteError",
            DropReason::BadTag => "AuthenticationError",
            DropReason::Replay => "ReplayError",
            DropReason::Downgrade => "DowngradeError",
            DropReason::Malformed => "MalformedFrameError",
            DropReason::Unpaired => "UnpairedFrameError",
            DropReason::NoSession => "NoSessionError",
        },
    }
}

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        Python::attach(|py| {
            let class = py
                .import("modbatt.errors")
                .and_then(|m| m.getattr(class_name(&error)))
                .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
            match class {
                Ok(class) => PyErr::from_type(class, error.to_string()),
                Err(_) => PyRuntimeError::new_err(format!(
                    "modbatt.errors is not importable; original error: {error}"
                )),
            }
        })
    }
}
