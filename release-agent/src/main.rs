//! `refresh-release-agent ARG`: the binary the kernel execs for every emptied cgroup of the
//! freezer hierarchy (see the library's documentation for what it does with ARG).
//!
//! Built with `panic = "abort"` (`cargo build --profile agent`), it is `no_std` + `no_main`: the
//! C runtime calls `main` below and nothing but libc is linked. With `panic = "unwind"` (dev,
//! test and release builds) rustc refuses a `no_std` binary ("unwinding panics are not
//! supported without std": the `eh_personality` lang item is unstable), so those builds link
//! std — only for its panic runtime; std's own `main` stays out (`no_main`) and the code that
//! runs is the same C `main`, argv parsed by hand.

#![cfg_attr(panic = "abort", no_std)]
#![no_main]
#![deny(unsafe_code)]

use core::ffi::{c_char, c_int};

use refresh_release_agent::{release, sys, Outcome, Paths};

/// The process's C `main`.
#[allow(unsafe_code)]
// SAFETY (`no_mangle`): `no_main` leaves `main` undefined, so this is the only definition of the symbol; its
// signature is the C `int main(int, char **)` the C runtime calls.
#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // Keeps the protocol marker in the binary, where refreshd looks for it before registering
    // a file as its agent (refreshd_runctl::AGENT_MARKER).
    core::hint::black_box(refreshd_runctl::AGENT_MARKER);
    #[allow(unsafe_code)]
    // SAFETY: `argc` and `argv` come straight from the C runtime, unmodified.
    let arg = unsafe { sys::single_arg(argc, argv) };
    match arg {
        Some(arg) => release(&Paths::HOST, arg),
        None => Outcome::Ignored,
    }
    .exit_code()
}

#[cfg(panic = "abort")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    sys::abort()
}

/// Never called: nothing unwinds with `panic = "abort"`. The precompiled `core` still refers to
/// the personality routine, and without LTO to drop those references the link would fail.
#[cfg(panic = "abort")]
#[allow(unsafe_code)]
// SAFETY (`no_mangle`): no other definition exists in a no_std binary (std, which has one, is not linked).
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
