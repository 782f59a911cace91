//! The Python bindings: the only place that knows about PyO3. Each wrapper converts its
//! arguments, delegates to the pure core and converts the result back.

mod batch;
#[cfg(target_os = "linux")]
mod dataplane;
mod errors;
mod gateway;
mod ids;
mod keys;
mod session;

use pyo3::prelude::*;

/// Register every class and function of `modbatt._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ids::register(m)?;
    m.add_class::<keys::LinkKey>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<gateway::Gateway>()?;
    #[cfg(target_os = "linux")]
    m.add_class::<dataplane::DataPlane>()?;
    m.add("KEY_HALF_LEN", crate::keys::KEY_HALF_LEN)?;
    m.add("NONCE_LEN", crate::keys::NONCE_LEN)?;
    m.add("DH_SECRET_LEN", crate::keys::DH_SECRET_LEN)?;
    m.add("MAX_DATA_LEN", crate::frame::MAX_DATA_LEN)?;
    m.add("FD_MAX_PAYLOAD", crate::frame::FD_MAX_PAYLOAD)?;
    m.add("MESSAGE_MAX", crate::message::MESSAGE_MAX)?;
    m.add("STATUS_FORWARDED", crate::gateway::STATUS_FORWARDED)?;
    m.add("STATUS_PENDING", crate::gateway::STATUS_PENDING)?;
    m.add("STATUS_LINK_DOWN", crate::gateway::STATUS_LINK_DOWN)?;
    let reasons: Vec<(u8, &str)> = crate::DropReason::ALL
        .iter()
        .map(|r| (*r as u8, r.name()))
        .collect();
    m.add("DROP_REASONS", reasons)?;
    Ok(())
}
