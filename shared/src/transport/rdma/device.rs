//! Opening an RDMA device: libibverbs present, the device, its port, GID and MTU, one protection
//! domain per process and device, and the registration cache for request payload memory.

use std::ffi::CStr;
use std::sync::{Arc, Mutex, Weak};

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;

use super::RdmaError;
use crate::config::{RdmaConfig, TransportConfig, TransportKind};
use crate::transport::PayloadSource;

/// IBV_LINK_LAYER_ETHERNET.
const LINK_LAYER_ETHERNET: u8 = 2;
/// IBV_PORT_ACTIVE.
const PORT_ACTIVE: u32 = 4;
/// IBV_GID_TYPE_SYSFS_ROCE_V2 (what ibv_query_gid_type reports).
const GID_TYPE_ROCE_V2: u32 = rdma_mummy_sys::IBV_GID_TYPE_SYSFS_ROCE_V2;

/// An opened device port, shared by every connection of a node.
pub struct RdmaDevice {
    pub(crate) ctx: Arc<DeviceContext>,
    pub(crate) pd: Arc<ProtectionDomain>,
    name: String,
    pub(crate) port: u8,
    pub(crate) gid_index: u8,
    pub(crate) gid: [u8; 16],
    pub(crate) lid: u16,
    pub(crate) ethernet: bool,
    /// Path MTU in bytes (configured, or the port's active MTU).
    pub(crate) mtu: u32,
    pub(crate) max_qp_wr: u32,
    pub(crate) config: RdmaConfig,
    sources: Mutex<Vec<Weak<SourceRegion>>>,
}

impl std::fmt::Debug for RdmaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RdmaDevice({})", self.describe())
    }
}

/// Whether libibverbs could be loaded (the RDMA library is loaded at run time, so the project
/// builds and runs without it until RDMA is selected); if not, [`RdmaError::Unavailable`] with the
/// loader's reason.
pub fn libibverbs_loaded() -> Result<(), RdmaError> {
    // SAFETY: dlopen with a constant, NUL-terminated name; RTLD_NOLOAD only looks the library up
    // (it was opened, if it exists, when this process started) and the handle is closed at once.
    unsafe {
        let name = c"libibverbs.so.1";
        let mut h = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if h.is_null() {
            h = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY);
        }
        if h.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() {
                "not found".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(RdmaError::Unavailable(why));
        }
        libc::dlclose(h);
    }
    Ok(())
}

fn mtu_bytes(raw: u32) -> u32 {
    // enum ibv_mtu: 1 = 256 ... 5 = 4096.
    match raw {
        1..=5 => 128 << raw,
        _ => 1024,
    }
}

/// The ibv_mtu value of a byte size.
pub(crate) fn mtu_enum(bytes: u32) -> u32 {
    match bytes {
        0..=256 => 1,
        257..=512 => 2,
        513..=1024 => 3,
        1025..=2048 => 4,
        _ => 5,
    }
}

impl RdmaDevice {
    /// The device a node's `[transport]` asks for: with `kind = "rdma"` the configured device and
    /// port, opened (see [`RdmaDevice::open`]) and logged once ("RDMA transport ready"); with
    /// `kind = "tcp"` none.
    pub fn open_configured(transport: &TransportConfig) -> Result<Option<Arc<RdmaDevice>>, RdmaError> {
        match transport.kind {
            TransportKind::Rdma => {
                let device = RdmaDevice::open(&transport.rdma)?;
                tracing::info!(device = %device.describe(), "RDMA transport ready");
                Ok(Some(device))
            }
            TransportKind::Tcp => Ok(None),
        }
    }

    /// Opens the configured device and port. Every failure is a clear error that says what to do.
    pub fn open(config: &RdmaConfig) -> Result<Arc<RdmaDevice>, RdmaError> {
        libibverbs_loaded()?;
        let list = DeviceList::new().map_err(|e| RdmaError::Unavailable(format!("cannot list RDMA devices: {e}")))?;
        let names: Vec<String> = list.iter().map(|d| d.name()).collect();
        if names.is_empty() {
            return Err(RdmaError::NoDevice);
        }
        let device =
            if config.device.is_empty() { list.iter().next() } else { list.iter().find(|d| d.name() == config.device) };
        let Some(device) = device else {
            return Err(RdmaError::DeviceNotFound { name: config.device.clone(), available: names.join(", ") });
        };
        let name = device.name();
        let ctx = device.open().map_err(|e| RdmaError::verbs("opening the device", e))?;
        let dev_attr = ctx.query_device().map_err(|e| RdmaError::verbs("querying the device", e))?;
        let port_err = |reason: String| RdmaError::Port { device: name.clone(), port: config.port, reason };
        let port = ctx.query_port(config.port).map_err(|e| port_err(e.to_string()))?;
        let pa = port.attr;
        if pa.state != PORT_ACTIVE {
            return Err(port_err(format!("the port is not active (state {}); is the link up?", pa.state)));
        }
        let ethernet = pa.link_layer == LINK_LAYER_ETHERNET;
        let (gid_index, gid) = pick_gid(&ctx, config, pa.gid_tbl_len, &name)?;
        let active = mtu_bytes(pa.active_mtu);
        let mtu = if config.mtu == 0 { active } else { config.mtu.min(active) };
        let pd = ctx.alloc_pd().map_err(|e| RdmaError::verbs("allocating a protection domain", e))?;
        Ok(Arc::new(RdmaDevice {
            ctx,
            pd,
            name,
            port: config.port,
            gid_index,
            gid,
            lid: pa.lid,
            ethernet,
            mtu,
            max_qp_wr: dev_attr.max_qp_wr().max(1) as u32,
            config: config.clone(),
            sources: Mutex::new(Vec::new()),
        }))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &RdmaConfig {
        &self.config
    }

    /// "rxe0 port 1, GID[1] ::ffff:10.0.0.1, MTU 1024" — for start-up logs.
    pub fn describe(&self) -> String {
        let gid = std::net::Ipv6Addr::from(self.gid);
        let gid = match gid.to_ipv4_mapped() {
            Some(v4) => format!("::ffff:{v4}"),
            None => gid.to_string(),
        };
        format!(
            "{} port {}, GID[{}] {gid}{}, MTU {}",
            self.name,
            self.port,
            self.gid_index,
            if self.ethernet { " (RoCE)" } else { "" },
            self.mtu
        )
    }

    /// Registers `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must stay mapped, and must not be freed or reused for anything else, until the
    /// returned region and every work request that names it are gone.
    pub(crate) unsafe fn register(
        &self,
        ptr: *const u8,
        len: usize,
        remote_write: bool,
    ) -> Result<Arc<MemoryRegion>, RdmaError> {
        let mut access = AccessFlags::LocalWrite;
        if remote_write {
            access |= AccessFlags::RemoteWrite;
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.pd.reg_mr(ptr as usize, len, access) }
            .map_err(|e| RdmaError::Register { bytes: len as u64, reason: e.to_string() })
    }

    /// The registration of a payload source (the frontend's loaded samples), made once per source
    /// and shared by every connection; the region keeps the source alive.
    pub fn source_region(&self, source: &Arc<dyn PayloadSource>) -> Result<Arc<SourceRegion>, RdmaError> {
        let bytes = source.bytes();
        let (ptr, len) = (bytes.as_ptr() as usize, bytes.len());
        let mut cache = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|w| w.strong_count() > 0);
        if let Some(r) = cache.iter().filter_map(Weak::upgrade).find(|r| r.start == ptr && r.len == len) {
            return Ok(r);
        }
        // SAFETY: the region holds an Arc of the source, whose bytes live as long as it does and
        // are never moved (a PayloadSource's buffer is fixed once built).
        let mr = unsafe { self.register(bytes.as_ptr(), len.max(1), false)? };
        let region = Arc::new(SourceRegion { lkey: mr.lkey(), start: ptr, len, _mr: mr, _source: source.clone() });
        cache.push(Arc::downgrade(&region));
        Ok(region)
    }
}

/// A registered payload source.
pub struct SourceRegion {
    pub(crate) lkey: u32,
    pub(crate) start: usize,
    pub(crate) len: usize,
    _mr: Arc<MemoryRegion>,
    _source: Arc<dyn PayloadSource>,
}

impl SourceRegion {
    /// Whether `bytes` lie inside the region.
    pub(crate) fn contains(&self, bytes: &[u8]) -> bool {
        let p = bytes.as_ptr() as usize;
        p >= self.start && p + bytes.len() <= self.start + self.len
    }
}

/// The GID to use on `device`'s configured port (see [`RdmaConfig::gid_index`]); a failure is the
/// port's error.
fn pick_gid(
    ctx: &Arc<DeviceContext>,
    config: &RdmaConfig,
    table_len: i32,
    device: &str,
) -> Result<(u8, [u8; 16]), RdmaError> {
    let port_err = |reason: String| RdmaError::Port { device: device.to_string(), port: config.port, reason };
    if config.gid_index >= 0 {
        let i = config.gid_index as u32;
        let gid = ctx.query_gid(config.port, i).map_err(|e| port_err(format!("GID index {i}: {e}")))?;
        if gid.raw == [0; 16] {
            return Err(port_err(format!(
                "GID index {i} is empty (`show_gids` or `ibv_devinfo -v` list the valid ones)"
            )));
        }
        return Ok((i as u8, gid.raw));
    }
    let mut first = None;
    for i in 0..table_len.clamp(0, 256) as u32 {
        let Ok(gid) = ctx.query_gid(config.port, i) else { continue };
        if gid.raw == [0; 16] {
            continue;
        }
        let v4_mapped = gid.raw[..10] == [0; 10] && gid.raw[10..12] == [0xff, 0xff];
        if v4_mapped && ctx.query_gid_type(config.port, i).ok() == Some(GID_TYPE_ROCE_V2) {
            return Ok((i as u8, gid.raw));
        }
        first.get_or_insert((i as u8, gid.raw));
    }
    first
        .ok_or_else(|| port_err("the port has no valid GID (on RoCE: does its network device have an address?)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_conversions() {
        assert_eq!((1..=5).map(mtu_bytes).collect::<Vec<_>>(), [256, 512, 1024, 2048, 4096]);
        assert_eq!([256, 1024, 4096, 9000].map(mtu_enum), [1, 3, 5, 5]);
    }
}
