//! Injected storage faults, for tests: an OpenDAL layer placed under the retry layer, so the
//! repository meets them as it would meet a flaky object store. Each request of a chosen
//! kind fails with the configured probability, as a temporary error (what retries are for)
//! that arrives at once, after a stall (a request that hangs until it times out), or at the
//! end of a write (a cut upload: the object is not published); writes can also be slowed.
//!
//! Enable it with [`crate::backend::BackendOptions::faults`].

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opendal::raw::*;
use opendal::{Buffer, BytesRange, Capability, Error, ErrorKind, Metadata, OperationContext, Result};

/// The kinds of request a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
    List,
    Stat,
    Delete,
}

/// What an injected failure looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fails at once.
    Error,
    /// Hangs for this long, then fails as timed out.
    Stall(Duration),
    /// Writes only: the upload goes through and fails at its end; nothing is published.
    Cut,
}

#[derive(Debug, Default)]
struct Plan {
    /// (request kinds, kind of failure, percent of requests)
    rules: Vec<(Vec<FaultOp>, FaultKind, u32)>,
    slow_writes: Option<Duration>,
    rng: u64,
}

/// Shared between a test and the backend it opened: change the plan at any time.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<Plan>,
    injected: AtomicU64,
}

impl Faults {
    /// No faults yet; `seed` makes the choices reproducible.
    pub fn new(seed: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Faults {
            plan: Mutex::new(Plan { rng: seed | 1, ..Plan::default() }),
            injected: AtomicU64::new(0),
        })
    }

    /// `percent` of the requests of kinds `ops` fail as `kind`.
    pub fn inject(&self, ops: &[FaultOp], kind: FaultKind, percent: u32) {
        self.lock().rules.push((ops.to_vec(), kind, percent.min(100)));
    }

    /// Every write call waits `delay` first.
    pub fn slow_writes(&self, delay: Duration) {
        self.lock().slow_writes = Some(delay);
    }

    /// Back to a healthy store.
    pub fn clear(&self) {
        let mut plan = self.lock();
        plan.rules.clear();
        plan.slow_writes = None;
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The failure this request meets, if any (`Cut` only for writes, decided at their end).
    fn draw(&self, op: FaultOp, at_end: bool) -> Option<FaultKind> {
        let mut plan = self.lock();
        let Plan { rules, rng, .. } = &mut *plan;
        for (ops, kind, percent) in rules.iter() {
            if !ops.contains(&op) || (*kind == FaultKind::Cut) != at_end {
                continue;
            }
            // xorshift64
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            if *rng % 100 < u64::from(*percent) {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Some(*kind);
            }
        }
        None
    }

    async fn hit(&self, op: FaultOp, at_end: bool) -> Result<()> {
        let Some(kind) = self.draw(op, at_end) else { return Ok(()) };
        if let FaultKind::Stall(d) = kind {
            tokio::time::sleep(d).await;
        }
        let what = match kind {
            FaultKind::Error => "injected failure",
            FaultKind::Stall(_) => "injected stall: request timed out",
            FaultKind::Cut => "injected cut: connection lost at the end of the upload",
        };
        Err(Error::new(ErrorKind::Unexpected, format!("{what} ({op:?})")).set_temporary())
    }

    /// For requests OpenDAL starts synchronously: errors only, no stall.
    fn hit_now(&self, op: FaultOp) -> Result<()> {
        match self.draw(op, false) {
            Some(_) => Err(Error::new(ErrorKind::Unexpected, format!("injected failure ({op:?})")).set_temporary()),
            None => Ok(()),
        }
    }
}

/// The OpenDAL layer of a [`Faults`] plan.
#[derive(Debug, Clone)]
pub(crate) struct FaultLayer(pub std::sync::Arc<Faults>);

impl Layer for FaultLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        std::sync::Arc::new(FaultService { inner, faults: self.0.clone() })
    }
}

struct FaultService {
    inner: Servicer,
    faults: std::sync::Arc<Faults>,
}

impl fmt::Debug for FaultService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Service for FaultService {
    type Reader = FaultReader;
    type Writer = FaultWriter;
    type Lister = oio::Lister;
    type Deleter = oio::Deleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    async fn create_dir(&self, ctx: &OperationContext, path: &str, args: OpCreateDir) -> Result<RpCreateDir> {
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.faults.hit(FaultOp::Stat, false).await?;
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        Ok(FaultReader { inner: self.inner.read(ctx, path, args)?, faults: self.faults.clone() })
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        Ok(FaultWriter { inner: self.inner.write(ctx, path, args)?, faults: self.faults.clone() })
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        self.faults.hit_now(FaultOp::Delete)?;
        self.inner.delete(ctx)
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        self.faults.hit_now(FaultOp::List)?;
        self.inner.list(ctx, path, args)
    }

    fn copy(&self, ctx: &OperationContext, from: &str, to: &str, args: OpCopy) -> Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args)
    }

    fn compose(&self, ctx: &OperationContext, to: &str, args: OpCompose) -> Result<Self::Composer> {
        self.inner.compose(ctx, to, args)
    }

    async fn rename(&self, ctx: &OperationContext, from: &str, to: &str, args: OpRename) -> Result<RpRename> {
        self.inner.rename(ctx, from, to, args).await
    }

    async fn presign(&self, ctx: &OperationContext, path: &str, args: OpPresign) -> Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

pub(crate) struct FaultReader {
    inner: oio::Reader,
    faults: std::sync::Arc<Faults>,
}

impl oio::Read for FaultReader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        self.faults.hit(FaultOp::Read, false).await?;
        self.inner.open(range).await
    }

    async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
        self.faults.hit(FaultOp::Read, false).await?;
        self.inner.read(range).await
    }
}

pub(crate) struct FaultWriter {
    inner: oio::Writer,
    faults: std::sync::Arc<Faults>,
}

impl oio::Write for FaultWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        let slow = self.faults.lock().slow_writes;
        if let Some(delay) = slow {
            tokio::time::sleep(delay).await;
        }
        self.faults.hit(FaultOp::Write, false).await?;
        self.inner.write(bs).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        // A cut upload: the store never publishes the object.
        self.faults.hit(FaultOp::Write, true).await?;
        self.inner.close().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
