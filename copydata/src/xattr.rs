//! Extended attributes: every namespace the kernel lets root read — `user.*`, `trusted.*`,
//! `security.*` (SELinux labels, file capabilities) and `system.posix_acl_*` (POSIX ACLs are
//! stored as these) — copied byte for byte.

use std::ffi::{CStr, CString};
use std::io;

use crate::sys::{self, XattrTarget};

/// One attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Xattr {
    pub name: CString,
    pub value: Vec<u8>,
}

/// File capabilities: dropped with setuid bits where privileges are stripped.
pub(crate) const CAPABILITY: &CStr = c"security.capability";
pub(crate) const ACL_ACCESS: &CStr = c"system.posix_acl_access";
pub(crate) const ACL_DEFAULT: &CStr = c"system.posix_acl_default";

/// What a file's owner may set without privileges: `user.*` and POSIX ACLs.
pub(crate) fn settable_by_owner(a: &Xattr) -> bool {
    let n = a.name.to_bytes();
    n.starts_with(b"user.") || n == ACL_ACCESS.to_bytes() || n == ACL_DEFAULT.to_bytes()
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP)
}

fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|n| !n.is_empty())
}

/// All attributes of a file. A filesystem without xattrs has none. On error, the name whose
/// value could not be read comes along (empty when the listing failed).
pub(crate) fn read_all(target: XattrTarget<'_>) -> Result<Vec<Xattr>, (String, io::Error)> {
    let list = match sys::list_xattrs(target) {
        Ok(l) => l,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err((String::new(), e)),
    };
    let mut out = Vec::new();
    for name in names(&list) {
        let name = CString::new(name).expect("split at NUL");
        match sys::get_xattr(target, &name) {
            Ok(value) => out.push(Xattr { name, value }),
            // Removed since the listing: it is not there now.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err((name.to_string_lossy().into_owned(), e)),
        }
    }
    Ok(out)
}

/// What setting attributes did.
#[derive(Default)]
pub(crate) struct Applied {
    pub set: u64,
    pub unsupported: u64,
}

/// Sets `attrs` on a file that has none of its own yet (a fresh copy). `ENOTSUP` is counted,
/// not fatal: the destination may lack ACLs or user xattrs (tmpfs without them, say).
pub(crate) fn write_all(
    target: XattrTarget<'_>,
    attrs: &[Xattr],
) -> Result<Applied, (String, io::Error)> {
    let mut applied = Applied::default();
    for a in attrs {
        match sys::set_xattr(target, &a.name, &a.value) {
            Ok(()) => applied.set += 1,
            Err(e) if unsupported(&e) => applied.unsupported += 1,
            Err(e) => return Err((a.name.to_string_lossy().into_owned(), e)),
        }
    }
    Ok(applied)
}

/// Makes the destination's attributes exactly `attrs`: removes the ones the source lacks
/// (a default ACL inherited at creation, an attribute removed since a pre-copy) and sets the
/// ones that differ.
pub(crate) fn sync(
    target: XattrTarget<'_>,
    attrs: &[Xattr],
) -> Result<Applied, (String, io::Error)> {
    let current = read_all(target)?;
    for c in &current {
        if attrs.iter().any(|a| a.name == c.name) {
            continue;
        }
        match sys::remove_xattr(target, &c.name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) || unsupported(&e) => {}
            Err(e) => return Err((c.name.to_string_lossy().into_owned(), e)),
        }
    }
    let changed: Vec<Xattr> = attrs
        .iter()
        .filter(|a| !current.contains(a))
        .cloned()
        .collect();
    write_all(target, &changed)
}

/// Removes the POSIX ACLs a new directory inherited from its parent's default ACL, so what is
/// created inside it inherits nothing and the copy carries the source's ACLs only.
pub(crate) fn drop_acls(target: XattrTarget<'_>) -> io::Result<()> {
    for name in [ACL_DEFAULT, ACL_ACCESS] {
        match sys::remove_xattr(target, name) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) && !unsupported(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
