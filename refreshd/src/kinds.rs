//! The kinds of changes and tasks: one type each, so that no module compares a kind as a
//! string. The state stores them, and the API shows them, by [`ChangeKind::as_str`] and
//! [`TaskKind::as_str`].

use std::fmt;

/// Declares a kind enum with its one spelling per variant, `as_str`, `parse` and `ALL`.
macro_rules! kinds {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $v,)+
        }

        impl $name {
            /// Every kind, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The kind as stored and shown.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }

            /// The kind spelled `s`, if it is one.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($s => Some($name::$v),)+
                    _ => None,
                }
            }

            /// Whether the stored spelling `s` is this kind.
            pub fn is(self, s: &str) -> bool {
                self.as_str() == s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

kinds! {
    /// What a change does to a snap.
    ChangeKind {
        /// A first install, from a file or the store (or a file installed over a snap).
        Install = "install",
        /// A new revision from the store.
        Refresh = "refresh",
        /// Back to a kept revision.
        Revert = "revert",
        Remove = "remove",
        /// A snapshot put back as the snap's data.
        Restore = "restore",
    }
}

impl ChangeKind {
    /// Changes that switch the snap to a revision (their data is a `SnapSetup`).
    pub fn switches_revision(self) -> bool {
        matches!(
            self,
            ChangeKind::Install | ChangeKind::Refresh | ChangeKind::Revert
        )
    }
}

kinds! {
    /// One step of a change (docs/architecture.md, "The engine"; handlers in `tasks/`).
    TaskKind {
        Download = "download",
        Prepare = "prepare",
        Mount = "mount",
        PreRefreshHook = "pre-refresh-hook",
        PrecopyData = "precopy-data",
        WaitForApps = "wait-for-apps",
        StopServices = "stop-services",
        SetupData = "setup-data",
        Link = "link",
        Launchers = "launchers",
        LiftInhibition = "lift-inhibition",
        StartServices = "start-services",
        PostRefreshHook = "post-refresh-hook",
        UserData = "user-data",
        Cleanup = "cleanup",
        Unlink = "unlink",
        Unmount = "unmount",
        SaveData = "save-data",
        Discard = "discard",
        RestoreData = "restore-data",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_itself() {
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(*k));
        }
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(k.as_str()), Some(*k));
            assert!(k.is(&k.to_string()));
        }
        assert_eq!(TaskKind::parse("no-such-task"), None);
    }
}
