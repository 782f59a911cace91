//! modbatt's secure CAN frame path, exposed to Python as `modbatt._core`.
//!
//! Pure Rust, one concept a module; `py/` is the only module that knows about Python.
//! The wire contract these modules implement is `docs/PROTOCOL.md`.

pub mod batch;
#[cfg(target_os = "linux")]
pub mod dataplane;
pub mod error;
pub mod frame;
mod freshness;
pub mod gateway;
pub mod ids;
pub mod keys;
mod mac;
pub mod message;
pub mod routing;
pub mod session;

#[cfg(feature = "python")]
mod py;

pub use error::{DropReason, Error, Result};
pub use frame::Frame;
pub use gateway::{Forward, Gateway, GatewayStats};
pub use keys::LinkKey;
pub use routing::{IdRewrite, LinkId, RoutingTable, Rule};
pub use session::{Sealed, Session, SessionLimits, SessionStats};

/// The extension module `modbatt._core`.
#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _core(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    py::register(m)
}
