//! The logical-connection key (the C proxy's ICProxyKey): in memory only,
//! never sent. It names one backend-to-backend connection as seen from this
//! proxy and builds the headers of the messages that connection sends.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::header::{Dialect, Endpoint, Header, PacketType};

/// One logical connection as seen from THIS proxy: `local` is the backend
/// attached here, `remote` the other end.
///
/// Equality and hashing compare only `local.dbid`, `local.pid`,
/// `remote.dbid`, `remote.pid`, `command_id`, `send_slice` and `recv_slice`,
/// as the C proxy does: content ids are implied by dbids and the session by
/// the pids. Liveness (same session and command) is a separate question.
#[derive(Clone, Copy, Debug)]
pub struct LogicalConnKey {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub session_id: i32,
    pub command_id: u32,
    pub send_slice: i16,
    pub recv_slice: i16,
}

impl PartialEq for LogicalConnKey {
    fn eq(&self, other: &Self) -> bool {
        self.local.dbid == other.local.dbid
            && self.local.pid == other.local.pid
            && self.remote.dbid == other.remote.dbid
            && self.remote.pid == other.remote.pid
            && self.command_id == other.command_id
            && self.send_slice == other.send_slice
            && self.recv_slice == other.recv_slice
    }
}

impl Eq for LogicalConnKey {}

impl Hash for LogicalConnKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly the fields `eq` compares.
        self.local.dbid.hash(state);
        self.local.pid.hash(state);
        self.remote.dbid.hash(state);
        self.remote.pid.hash(state);
        self.command_id.hash(state);
        self.send_slice.hash(state);
        self.recv_slice.hash(state);
    }
}

impl LogicalConnKey {
    /// Key of a packet leaving a local backend: local = src, remote = dst.
    pub fn from_c2p(h: &Header) -> Self {
        Self::with_ends(h, h.src, h.dst)
    }

    /// Key of a packet arriving for a local backend: local = dst, remote = src.
    pub fn from_p2c(h: &Header) -> Self {
        Self::with_ends(h, h.dst, h.src)
    }

    fn with_ends(h: &Header, local: Endpoint, remote: Endpoint) -> Self {
        LogicalConnKey {
            local,
            remote,
            session_id: h.session_id,
            command_id: h.command_id,
            send_slice: h.send_slice,
            recv_slice: h.recv_slice,
        }
    }

    /// The same connection seen from the other end: local and remote swapped,
    /// session, command and slices kept.
    pub fn reversed(&self) -> Self {
        LogicalConnKey {
            local: self.remote,
            remote: self.local,
            ..*self
        }
    }

    /// Header of a packet this key's local backend sends: src = local,
    /// dst = remote, `len = header_len + payload_len`.
    ///
    /// # Panics
    /// If `header_len + payload_len` does not fit the u16 `len`; payloads are
    /// bounded by gp_max_packet_size (at most [`super::MAX_PACKET_SIZE_LIMIT`]).
    pub fn header(&self, ptype: PacketType, d: Dialect, payload_len: usize) -> Header {
        let len = u16::try_from(d.header_len() + payload_len)
            .expect("payload_len exceeds the u16 packet length");
        Header {
            len,
            ptype,
            src: self.local,
            dst: self.remote,
            session_id: self.session_id,
            command_id: self.command_id,
            send_slice: self.send_slice,
            recv_slice: self.recv_slice,
        }
    }
}

impl fmt::Display for LogicalConnKey {
    /// `con<session>,cmd<command>,slice[<send>-><recv>] <local>-><remote>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "con{},cmd{},slice[{}->{}] {}->{}",
            self.session_id,
            self.command_id,
            self.send_slice,
            self.recv_slice,
            self.local,
            self.remote
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;
    use std::collections::HashSet;

    use super::*;

    fn hello() -> Header {
        Header {
            len: 36,
            ptype: PacketType::Hello,
            src: Endpoint {
                content: -1,
                dbid: 1,
                pid: 100,
            },
            dst: Endpoint {
                content: 0,
                dbid: 2,
                pid: 200,
            },
            session_id: 7,
            command_id: 3,
            send_slice: 1,
            recv_slice: 0,
        }
    }

    fn hash_of(k: &LogicalConnKey) -> u64 {
        let mut s = DefaultHasher::new();
        k.hash(&mut s);
        s.finish()
    }

    #[test]
    fn c2p_and_p2c() {
        let h = hello();
        let c2p = LogicalConnKey::from_c2p(&h);
        assert_eq!((c2p.local, c2p.remote), (h.src, h.dst));
        let p2c = LogicalConnKey::from_p2c(&h);
        assert_eq!((p2c.local, p2c.remote), (h.dst, h.src));
        for k in [c2p, p2c] {
            assert_eq!(
                (k.session_id, k.command_id, k.send_slice, k.recv_slice),
                (7, 3, 1, 0)
            );
        }
        // The sender's c2p key reversed is the receiver's p2c key, field by field.
        let r = c2p.reversed();
        assert_eq!((r.local, r.remote), (p2c.local, p2c.remote));
        assert_eq!(r, p2c);
        assert_eq!(r.session_id, p2c.session_id);
        // Reversing twice gives the key back, every field included.
        let rr = c2p.reversed().reversed();
        assert_eq!(
            (rr.local, rr.remote, rr.session_id),
            (c2p.local, c2p.remote, 7)
        );
    }

    #[test]
    fn header_from_key() {
        let h = hello();
        let k = LogicalConnKey::from_c2p(&h);
        assert_eq!(k.header(PacketType::Hello, Dialect::C, 0), h);
        let data = k.header(PacketType::Data, Dialect::B, 10);
        assert_eq!(data.len, 42);
        assert_eq!((data.src, data.dst), (h.src, h.dst));
        // A key rebuilt from its own header is the same key.
        assert_eq!(LogicalConnKey::from_c2p(&data), k);
        assert_eq!(LogicalConnKey::from_p2c(&data), k.reversed());
        let ack = k.reversed().header(PacketType::HelloAck, Dialect::C, 0);
        assert_eq!((ack.src, ack.dst, ack.len), (h.dst, h.src, 36));
    }

    #[test]
    #[should_panic(expected = "payload_len exceeds")]
    fn header_from_key_rejects_oversized_payload() {
        LogicalConnKey::from_c2p(&hello()).header(PacketType::Data, Dialect::C, 65500);
    }

    #[test]
    fn eq_and_hash_ignore_content_and_session() {
        let k = LogicalConnKey::from_c2p(&hello());
        let mut other = k;
        other.local.content = 42;
        other.remote.content = -2;
        other.session_id = 99;
        assert_eq!(k, other);
        assert_eq!(hash_of(&k), hash_of(&other));
        let set: HashSet<_> = [k, other].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn eq_compares_every_other_field() {
        let k = LogicalConnKey::from_c2p(&hello());
        let changes: [fn(&mut LogicalConnKey); 7] = [
            |k| k.local.dbid += 1,
            |k| k.local.pid += 1,
            |k| k.remote.dbid += 1,
            |k| k.remote.pid += 1,
            |k| k.command_id += 1,
            |k| k.send_slice += 1,
            |k| k.recv_slice += 1,
        ];
        for change in changes {
            let mut other = k;
            change(&mut other);
            assert_ne!(k, other, "{other:?}");
        }
        assert_ne!(k, k.reversed());
    }

    #[test]
    fn display() {
        let k = LogicalConnKey::from_c2p(&hello());
        assert_eq!(
            k.to_string(),
            "con7,cmd3,slice[1->0] seg-1:dbid1:p100->seg0:dbid2:p200"
        );
        assert_eq!(
            k.reversed().to_string(),
            "con7,cmd3,slice[1->0] seg0:dbid2:p200->seg-1:dbid1:p100"
        );
    }
}
