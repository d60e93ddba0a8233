//! The threads ringship starts, marked as its own: the front-ends append
//! nothing emitted on them (ringship's diagnostics, and the user code it
//! runs there: transports, factories, callbacks), so that shipping never
//! feeds the ring it ships from.

use std::cell::Cell;
use std::thread::JoinHandle;

thread_local! {
    static OWN: Cell<bool> = const { Cell::new(false) };
}

/// Starts a thread named `name` running `f`, marked as ringship's own.
/// With the `opentelemetry` feature it also runs in the OpenTelemetry
/// SDK's suppression scope, so the SDK drops what is emitted there too.
pub(crate) fn spawn<T: Send + 'static>(
    name: impl Into<String>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(move || {
        OWN.with(|own| own.set(true));
        #[cfg(feature = "opentelemetry")]
        let _suppressed = opentelemetry::Context::enter_telemetry_suppressed_scope();
        f()
    })
}

/// Whether the calling thread is one of ringship's own.
#[cfg_attr(not(any(feature = "tracing", feature = "log", feature = "opentelemetry")), allow(dead_code))]
pub(crate) fn is_own() -> bool {
    OWN.with(Cell::get)
}

/// Reports something the user should know and cannot be told by a return
/// value: through `tracing` (target `ringship`, level WARN) with the
/// `tracing` feature when a subscriber is set, on stderr otherwise.
macro_rules! diag {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        let to_tracing = !::tracing::dispatcher::get_default(|d| d.is::<::tracing::subscriber::NoSubscriber>());
        #[cfg(not(feature = "tracing"))]
        let to_tracing = false;
        if to_tracing {
            #[cfg(feature = "tracing")]
            ::tracing::warn!(target: "ringship", $($arg)*);
        } else {
            eprintln!("ringship: {}", format_args!($($arg)*));
        }
    }};
}
pub(crate) use diag;
