//! The result type of the C ABI and the detail of the last failure on a thread.
//!
//! A function returns [`sync_result_code`] itself: its numbers are the ABI and its messages
//! come from `Display`, so there is one table of codes, here. The detail ("unknown option
//! 'colour'") is thread-local and cleared as every other call begins, so
//! `sync_error_message` never pairs a code with the detail of an older failure.

use std::cell::RefCell;
use std::ffi::c_char;
use std::fmt;

/// The status every function returns. Numbers are stable and never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sync_result_code {
    /// Success.
    SYNC_OK = 0,
    /// The key is not in the version read.
    SYNC_NOT_FOUND = 1,
    /// No version has arrived yet (the handle was opened with `allow_not_ready=1`).
    SYNC_NOT_READY = 2,
    /// The value does not fit; `*out_len` holds the length needed.
    SYNC_BUFFER_TOO_SMALL = 3,
    /// A required pointer was NULL.
    SYNC_NULL_PARAMETER = 4,
    /// A parameter is out of range (for example a zero-length key, or a stats struct whose
    /// `struct_size` is too small).
    SYNC_INVALID_PARAMETER = 5,
    /// The options string is malformed or names an unknown option.
    SYNC_BAD_OPTION = 6,
    /// The data server could not be reached, or sent nothing usable, within the bootstrap wait.
    SYNC_UNREACHABLE = 7,
    /// The retrieval thread could not be started.
    SYNC_THREAD_FAILED = 8,
    /// A bug inside the library was caught before it reached the caller.
    SYNC_PANIC = 9,
    /// The data server refused the read token (HTTP 401 or 403): it was reached, and a
    /// retry with the same token will not help.
    SYNC_UNAUTHORIZED = 10,
}

/// A status: one of the `sync_result_code` numbers (a `uint32_t` in C).
pub type sync_result = sync_result_code;

use sync_result_code::*;

impl sync_result_code {
    /// The code for a number, if it is one (C may pass any `uint32_t`).
    pub fn from_u32(n: u32) -> Option<sync_result_code> {
        const ALL: [sync_result_code; 11] = [
            SYNC_OK,
            SYNC_NOT_FOUND,
            SYNC_NOT_READY,
            SYNC_BUFFER_TOO_SMALL,
            SYNC_NULL_PARAMETER,
            SYNC_INVALID_PARAMETER,
            SYNC_BAD_OPTION,
            SYNC_UNREACHABLE,
            SYNC_THREAD_FAILED,
            SYNC_PANIC,
            SYNC_UNAUTHORIZED,
        ];
        ALL.into_iter().find(|c| *c as u32 == n)
    }
}

impl fmt::Display for sync_result_code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SYNC_OK => "success",
            SYNC_NOT_FOUND => "key not found",
            SYNC_NOT_READY => "no version has arrived from the data server yet",
            SYNC_BUFFER_TOO_SMALL => "buffer too small for the value",
            SYNC_NULL_PARAMETER => "a required pointer was NULL",
            SYNC_INVALID_PARAMETER => "a parameter is out of range",
            SYNC_BAD_OPTION => "bad option",
            SYNC_UNREACHABLE => "data server unreachable",
            SYNC_THREAD_FAILED => "cannot start the retrieval thread",
            SYNC_PANIC => "internal error (a bug in lockstep; please report it)",
            SYNC_UNAUTHORIZED => "the data server refused the read token",
        })
    }
}

thread_local! {
    /// Detail of the last failure on this thread, for `sync_error_message`.
    static LAST_DETAIL: RefCell<Option<(sync_result_code, String)>> =
        const { RefCell::new(None) };
}

/// Returns `code`, keeping `detail` for `sync_error_message` on this thread.
pub(crate) fn fail(code: sync_result_code, detail: impl Into<String>) -> sync_result_code {
    let detail = detail.into();
    LAST_DETAIL.with(|d| *d.borrow_mut() = Some((code, detail)));
    code
}

/// Forgets the last failure's detail: called as every ABI call but `sync_error_message`
/// begins.
pub(crate) fn clear_detail() {
    // try_with: a call made while the thread's locals are being torn down has no detail.
    let _ = LAST_DETAIL.try_with(|d| d.borrow_mut().take());
}

fn detail_for(code: sync_result_code) -> Option<String> {
    LAST_DETAIL
        .try_with(|d| match &*d.borrow() {
            Some((c, detail)) if *c == code => Some(detail.clone()),
            _ => None,
        })
        .ok()
        .flatten()
}

/// What a function returns when its body panicked (see `ffi_panic_boundary!`).
pub(crate) trait PanicOrDefault {
    fn on_panic() -> Self;
}

impl PanicOrDefault for sync_result_code {
    fn on_panic() -> Self {
        SYNC_PANIC
    }
}

impl PanicOrDefault for () {
    fn on_panic() -> Self {}
}

impl PanicOrDefault for u32 {
    fn on_panic() -> Self {
        0
    }
}

impl PanicOrDefault for *const c_char {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

/// Records a caught panic's message as the detail of `SYNC_PANIC`.
pub(crate) fn record_panic(payload: &(dyn std::any::Any + Send)) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    fail(SYNC_PANIC, msg);
}

pub(crate) fn write_c_string(
    text: &str,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sync_result {
    if buf.is_null() || out_len.is_null() {
        return SYNC_NULL_PARAMETER;
    }
    if len == 0 {
        return SYNC_INVALID_PARAMETER;
    }
    let mut n = text.len().min(len - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: buf has len writable bytes and n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
        *out_len = n;
    }
    SYNC_OK
}

/// Writes a NUL-terminated description of `result` (a `sync_result`) into `buf` (truncated to
/// `len - 1` bytes; `*out_len` is the length written, without the NUL). When the last call on
/// this thread failed with `result`, its detail follows ("bad option: unknown option
/// 'colour'"). Every other call clears that detail as it begins, so it is never an older
/// call's.
#[no_mangle]
pub extern "C" fn sync_error_message(
    result: u32,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sync_result {
    ffi_panic_boundary!(keep_detail, {
        let text = match sync_result_code::from_u32(result) {
            None => "unknown result code".to_owned(),
            Some(code) => match detail_for(code) {
                Some(d) if !d.is_empty() => format!("{code}: {d}"),
                _ => code.to_string(),
            },
        };
        write_c_string(&text, buf, len, out_len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_maps_back_to_its_code_and_no_other() {
        for n in 0..=10 {
            assert_eq!(sync_result_code::from_u32(n).map(|c| c as u32), Some(n));
        }
        assert_eq!(sync_result_code::from_u32(11), None);
        assert_eq!(sync_result_code::from_u32(u32::MAX), None);
    }
}
