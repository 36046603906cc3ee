//! `ic-proxy send` and `ic-proxy recv`: one backend of one logical
//! connection, speaking to a proxy's Unix socket through `ic_proxy_client`.
//! A sender streams stdin as ic-tcp packets, half-closes (BYE) and waits for
//! the receiver's BYE; a receiver writes every payload to stdout and
//! half-closes once the sender's BYE has arrived.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ic_proxy_client::{ClientError, LogicalConn, RecvHalf, RecvItem};
use tokio::sync::mpsc;

use crate::args::{ConnArgs, RecvArgs};
use crate::{count, EXIT_FAILURE};

/// Bytes asked of stdin per read; one read becomes one write of as many
/// packets as it fills.
const STDIN_CHUNK: usize = 64 * 1024;
/// Reads that may wait for the socket: bounds memory when the proxy is slow.
const STDIN_QUEUE: usize = 4;
/// How long a write under way when STOP arrives may take to complete.
const STOP_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum BackendError {
    Client(ClientError),
    Stdin(io::Error),
    Stdout(io::Error),
    /// The other end (or its proxy) closed without STOP before our BYE.
    ReceiverGone {
        sent: u64,
    },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Client(e) => e.fmt(f),
            BackendError::Stdin(e) => write!(f, "cannot read stdin: {e}"),
            BackendError::Stdout(e) => write!(f, "cannot write stdout: {e}"),
            BackendError::ReceiverGone { sent } => write!(
                f,
                "the connection ended before all of stdin was sent ({sent} bytes sent): \
                 the receiver, or a proxy on the way, is gone"
            ),
        }
    }
}

impl From<ClientError> for BackendError {
    fn from(e: ClientError) -> Self {
        BackendError::Client(e)
    }
}

/// How the other end finished, as seen by the sender.
struct RemoteEnd {
    /// It asked us to stop (a lone 'S' before its BYE).
    stopped: bool,
    /// Payloads it sent us, which a sender has no use for.
    ignored_packets: u64,
}

pub fn send(args: ConnArgs) -> ExitCode {
    block_on("send", send_stdin(args))
}

pub fn recv(args: RecvArgs) -> ExitCode {
    block_on("recv", recv_stdout(args))
}

fn block_on(name: &str, work: impl Future<Output = Result<(), BackendError>>) -> ExitCode {
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(e) => Err(BackendError::Client(ClientError::Io(e))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ic-proxy {name}: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn send_stdin(args: ConnArgs) -> Result<(), BackendError> {
    let max_payload = args.max_payload();
    let conn = LogicalConn::connect(&args.socket_path(), args.spec(), &args.options()).await?;
    let (mut out, incoming) = conn.into_split();
    let mut remote = tokio::spawn(await_remote_end(incoming));
    let mut input = read_stdin();
    let mut sent = 0u64;
    let early_end = loop {
        let data = tokio::select! {
            chunk = input.recv() => match chunk {
                Some(Ok(data)) => data,
                Some(Err(e)) => return Err(BackendError::Stdin(e)),
                None => break None,
            },
            end = &mut remote => break Some(joined(end)?),
        };
        let packets: Vec<&[u8]> = data.chunks(max_payload).collect();
        let write = out.send_packets(&packets);
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => written?,
            // The proxy may hold our writes back for good once the receiver
            // is gone; its end must still be noticed.
            end = &mut remote => {
                let end = joined(end)?;
                if end.stopped {
                    // Complete the packets in flight: a stream cut inside a
                    // packet is an error for the receiver, a STOP is not.
                    match tokio::time::timeout(STOP_DRAIN, &mut write).await {
                        Ok(written) => {
                            written?;
                            sent += data.len() as u64;
                        }
                        Err(_) => {
                            log::warn!(
                                "ic-proxy send: the write in progress at STOP did not \
                                 complete within {STOP_DRAIN:?}; abandoning it"
                            );
                            return Ok(());
                        }
                    }
                }
                break Some(end);
            }
        }
        sent += data.len() as u64;
    };
    let end = match early_end {
        None => {
            out.finish().await?;
            joined(remote.await)?
        }
        Some(end) if end.stopped => {
            out.finish().await?;
            end
        }
        Some(_) => return Err(BackendError::ReceiverGone { sent }),
    };
    if end.stopped {
        log::warn!("ic-proxy send: the receiver asked to stop after {sent} bytes");
    }
    if end.ignored_packets > 0 {
        log::warn!(
            "ic-proxy send: ignored {} from the receiver",
            count(end.ignored_packets, "packet")
        );
    }
    Ok(())
}

fn joined(
    end: Result<Result<RemoteEnd, ClientError>, tokio::task::JoinError>,
) -> Result<RemoteEnd, BackendError> {
    match end {
        Ok(r) => Ok(r?),
        Err(e) => Err(BackendError::Client(ClientError::Io(io::Error::other(e)))),
    }
}

/// Reads until the other end's BYE; STOP comes right before it.
async fn await_remote_end(mut incoming: RecvHalf) -> Result<RemoteEnd, ClientError> {
    let mut end = RemoteEnd {
        stopped: false,
        ignored_packets: 0,
    };
    loop {
        match incoming.recv().await? {
            RecvItem::Packet(_) => end.ignored_packets += 1,
            RecvItem::Stop => end.stopped = true,
            RecvItem::Eof => return Ok(end),
        }
    }
}

/// Stdin on a thread of its own: a blocking read cannot be cancelled, and
/// the process must be able to exit while one is pending (STOP received,
/// input still open). Each read is passed on as soon as it returns.
fn read_stdin() -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut buf = BytesMut::zeroed(STDIN_CHUNK);
            let item = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf.freeze())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Payloads that may wait for stdout: bounds memory when stdout is slow.
const STDOUT_QUEUE: usize = 64;

/// Stdout on a thread of its own, buffered: each payload is written as it
/// comes, and the buffer is flushed whenever no further payload is waiting,
/// so output is prompt without a write (and a thread hand-off) per packet.
fn write_stdout() -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<io::Result<()>>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDOUT_QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
        while let Some(first) = rx.blocking_recv() {
            out.write_all(&first)?;
            while let Ok(more) = rx.try_recv() {
                out.write_all(&more)?;
            }
            out.flush()?;
        }
        Ok(())
    });
    (tx, writer)
}

async fn recv_stdout(args: RecvArgs) -> Result<(), BackendError> {
    let conn = &args.conn;
    let mut conn = LogicalConn::connect(&conn.socket_path(), conn.spec(), &conn.options()).await?;
    let (stdout, written) = write_stdout();
    let (mut packets, mut bytes) = (0u64, 0u64);
    loop {
        match conn.recv().await? {
            RecvItem::Packet(payload) => {
                packets += 1;
                bytes += payload.len() as u64;
                if stdout.send(payload).await.is_err() {
                    // The writer stopped: its error is below.
                    break;
                }
            }
            // Receivers send STOP, senders do not; nothing to do but wait
            // for the BYE behind it.
            RecvItem::Stop => log::warn!("ic-proxy recv: the other end sent STOP"),
            RecvItem::Eof => break,
        }
    }
    drop(stdout);
    written
        .await
        .map_err(|e| BackendError::Stdout(io::Error::other(e)))?
        .map_err(BackendError::Stdout)?;
    conn.finish().await?;
    if args.count {
        eprintln!(
            "received {}, {}",
            count(packets, "packet"),
            count(bytes, "byte")
        );
    }
    Ok(())
}
