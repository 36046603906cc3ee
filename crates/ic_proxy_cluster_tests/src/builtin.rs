//! A stand-in for the "ic proxy process" that every Cloudberry and
//! Greenplum 6/7 build starts whatever gp_interconnect_type says: like the C
//! proxy, it unlinks the backend socket's path unconditionally, binds its
//! own socket there and listens, at its start and again when it restarts.
//! It never answers a HELLO, so a backend that reaches it gets no HELLO_ACK.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

pub struct BuiltinProxy {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// (device, inode) of the socket file it bound last.
    bound: Option<(u64, u64)>,
}

/// (device, inode) of the file at `path`.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl BuiltinProxy {
    /// Takes `path` as the C proxy does at its start.
    pub fn start(path: &Path) -> BuiltinProxy {
        let mut b = BuiltinProxy {
            path: path.to_path_buf(),
            listener: None,
            bound: None,
        };
        b.restart();
        b
    }

    /// Starts again: unlink, bind, listen.
    pub fn restart(&mut self) {
        self.listener = None;
        let _ = std::fs::remove_file(&self.path);
        let l = UnixListener::bind(&self.path).expect("the stand-in binds the path");
        // The built-in proxy runs as the server's user, so the server's
        // processes can reach its socket; this stand-in may run as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod the stand-in's socket");
        self.bound = file_id(&self.path);
        self.listener = Some(l);
    }

    /// True while the path is still this stand-in's socket.
    pub fn holds_path(&self) -> bool {
        self.bound.is_some() && file_id(&self.path) == self.bound
    }
}
