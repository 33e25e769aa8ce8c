//! A fault-injecting TCP proxy, placed between the relay and PostgreSQL or the broker, so
//! network faults are tested and not only process deaths.
//!
//! On command it can:
//! - **cut** every open connection at once, with a reset on both sides (as a crashed
//!   middlebox or a lost NAT entry would), while new connections still go through;
//! - **stall** all traffic, open and new connections alike: the sockets stay up but no byte
//!   moves (a network partition without resets, the case timeouts exist for);
//! - **block** new connections (accepted and reset at once), e.g. to keep a relay away
//!   from PostgreSQL while the test changes the slot under it;
//! - add **latency** to every chunk, in both directions.
//!
//! It runs on the test's tokio runtime; dropping it stops it and closes its connections.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy from `127.0.0.1:port()` to its target.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    target: Mutex<String>,
    /// Bumped by every cut: each connection watches it and resets itself.
    cuts: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    blocked: AtomicBool,
    latency_micros: AtomicU64,
    accepted: AtomicUsize,
}

impl FaultProxy {
    /// Proxies connections accepted on a free loopback port to `target` (`host:port`).
    pub async fn to(target: impl Into<String>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State {
            target: Mutex::new(target.into()),
            cuts: watch::channel(0).0,
            stalled: watch::channel(false).0,
            blocked: AtomicBool::new(false),
            latency_micros: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        FaultProxy {
            port,
            state,
            accept_task,
        }
    }

    /// Sends new connections to `target` from now on. A broker behind the proxy must
    /// advertise the proxy's port, which is known before the broker's own.
    pub fn retarget(&self, target: impl Into<String>) {
        *self.state.target.lock().unwrap() = target.into();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Resets every open connection now.
    pub fn cut(&self) {
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Stops all traffic until [`FaultProxy::resume`].
    pub fn stall(&self) {
        self.state.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.state.stalled.send_replace(false);
    }

    /// New connections are reset at once until [`FaultProxy::unblock`].
    pub fn block(&self) {
        self.state.blocked.store(true, Ordering::SeqCst);
    }

    pub fn unblock(&self) {
        self.state.blocked.store(false, Ordering::SeqCst);
    }

    /// Delays every chunk by `latency`, in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_micros
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// Connections accepted so far (including blocked ones).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        reset_on_close(&client);
        if state.blocked.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(connect_and_pump(client, Arc::clone(&state)));
    }
}

/// Linger 0: closing sends a reset, so a cut is abrupt on both sides. (tokio deprecates
/// `set_linger` because a non-zero linger blocks on drop; zero never blocks.)
#[allow(deprecated)]
fn reset_on_close(socket: &TcpStream) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}

async fn connect_and_pump(client: TcpStream, state: Arc<State>) {
    let mut cuts = state.cuts.subscribe();
    cuts.mark_unchanged();
    let target = state.target.lock().unwrap().clone();
    let upstream = tokio::select! {
        upstream = TcpStream::connect(target) => match upstream {
            Ok(upstream) => upstream,
            Err(_) => return, // Target down: the client sees a reset, as without a proxy.
        },
        _ = cuts.changed() => return,
    };
    reset_on_close(&upstream);
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let upward = tokio::spawn(pump(
        client_read,
        upstream_write,
        Arc::clone(&state),
        cuts.clone(),
    ));
    pump(upstream_read, client_write, Arc::clone(&state), cuts).await;
    let _ = upward.await;
}

/// Copies `from` to `to` until either side closes or a cut, obeying stall and latency.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: Arc<State>,
    mut cuts: watch::Receiver<u64>,
) {
    let mut stalled = state.stalled.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Nothing is read while stalled, so the sender's socket buffers fill as on a dead link.
        while *stalled.borrow_and_update() {
            tokio::select! {
                _ = stalled.changed() => {}
                _ = cuts.changed() => return,
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = cuts.changed() => return,
            _ = stalled.changed() => continue,
        };
        while *stalled.borrow_and_update() {
            tokio::select! {
                _ = stalled.changed() => {}
                _ = cuts.changed() => return,
            }
        }
        let latency = Duration::from_micros(state.latency_micros.load(Ordering::SeqCst));
        if !latency.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(latency) => {}
                _ = cuts.changed() => return,
            }
        }
        tokio::select! {
            written = to.write_all(&buf[..n]) => if written.is_err() { return },
            _ = cuts.changed() => return,
        }
    }
}
