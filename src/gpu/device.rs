//! Adapter and device setup: request the adapter's own limits and the optional features
//! (subgroups, f16, timestamp queries) when present, with a path that works without them.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Options for opening a GPU device.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Cap the storage-buffer binding size (bytes) below the adapter's limit; tests use this to
    /// exercise the tensor-splitting path on adapters with large limits.
    pub max_binding_override: Option<u64>,
    /// Ignore the subgroup feature even when the adapter has it (forces the shared-memory path).
    pub no_subgroups: bool,
    /// Pick the adapter whose name contains this text (case-insensitive).
    pub adapter_name: Option<String>,
}

/// Longest spin of [`GpuContext::wait_for`] before it falls back to the blocking poll: one
/// decode step of a 7B model takes 3-4 ms, so a longer spin only burns a core. (The hangs of
/// the parallel GPU tests on the H100 that session 8 blamed on the spin happen without it
/// too; docs/gpu.md, known issue.)
pub const SPIN_LIMIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Facts about the opened adapter, for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterFacts {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Device type (DiscreteGpu, Cpu, ...).
    pub device_type: String,
    /// Driver name and version text.
    pub driver: String,
    /// Largest storage-buffer binding in use (bytes).
    pub max_binding: u64,
    /// Largest buffer (bytes).
    pub max_buffer: u64,
    /// Workgroup shared memory (bytes).
    pub shared_mem: u32,
    /// Subgroups used (and their size when fixed).
    pub subgroup_size: Option<u32>,
    /// f16 shader type available.
    pub shader_f16: bool,
    /// Timestamp queries available.
    pub timestamps: bool,
    /// Cooperative matrices (tensor cores) used by the prompt mat-mat kernel: 16×16×16 with
    /// f16 inputs and f32 accumulation, subgroups of 32 (GGUFQ_COOP=0 turns them off).
    pub coop_matrix: bool,
    /// Most invocations one compute workgroup may have (the smaller of the adapter's total
    /// and x-dimension limits).
    pub max_wg_threads: u32,
}

impl AdapterFacts {
    /// Whether the adapter runs on the CPU (lavapipe): its workgroups run on a few OS
    /// threads, so waits between workgroups and spinning host waits are not what a GPU's are.
    pub fn is_cpu(&self) -> bool {
        self.device_type == format!("{:?}", wgpu::DeviceType::Cpu)
    }
}

/// An open device with its queue and the facts the kernels need.
pub struct GpuContext {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Adapter facts.
    pub facts: AdapterFacts,
    /// Effective max storage binding size in bytes (a multiple of 256).
    pub max_binding: u64,
    /// Fixed subgroup size usable by kernels (only when min == max == 32).
    pub subgroup32: bool,
    /// Kernel shape choices.
    pub tune: super::kernels::Tune,
}

impl GpuContext {
    /// Open the best adapter (high performance, any backend) with its full limits.
    ///
    /// Fails with a clear error when no adapter exists.
    pub fn new(opts: &DeviceOptions) -> Result<GpuContext> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = if let Some(want) = &opts.adapter_name {
            let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
            let w = want.to_lowercase();
            let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
            all.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w))
                .ok_or_else(|| {
                    Error::msg(format!("no GPU adapter matches '{want}' (have: {names:?})"))
                })?
        } else {
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|e| {
                Error::msg(format!(
                    "no GPU adapter found ({e}); install a Vulkan/Metal/DX12 driver \
                     (on Linux without a GPU: mesa-vulkan-drivers for lavapipe)"
                ))
            })?
        };
        let info = adapter.get_info();
        let alimits = adapter.limits();
        let afeat = adapter.features();
        let mut features = wgpu::Features::empty();
        let want_sub = afeat.contains(wgpu::Features::SUBGROUP) && !opts.no_subgroups;
        if want_sub {
            features |= wgpu::Features::SUBGROUP;
        }
        if afeat.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        let coop = super::kernels::coop_usable(&adapter, want_sub);
        if coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let ts = afeat.contains(wgpu::Features::TIMESTAMP_QUERY);
        if ts {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ggufq"),
            required_features: features,
            required_limits: alimits.clone(),
            experimental_features: if coop {
                // SAFETY: the only experimental feature requested is cooperative matrices, used
                // by one kernel (shaders/matmat_coop.wgsl) whose results tests and
                // `bench --kernels` check against the CPU; GGUFQ_COOP=0 avoids it.
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::msg(format!("GPU device request failed on '{}': {e}", info.name)))?;
        let mut max_binding =
            (alimits.max_storage_buffer_binding_size as u64).min(alimits.max_buffer_size);
        if let Some(cap) = opts.max_binding_override {
            max_binding = max_binding.min(cap);
        }
        max_binding &= !255;
        let subgroup32 = want_sub && info.subgroup_min_size == 32 && info.subgroup_max_size == 32;
        let facts = AdapterFacts {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            max_binding,
            max_buffer: alimits.max_buffer_size,
            shared_mem: alimits.max_compute_workgroup_storage_size,
            subgroup_size: subgroup32.then_some(32),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: ts,
            coop_matrix: coop,
            max_wg_threads: alimits
                .max_compute_invocations_per_workgroup
                .min(alimits.max_compute_workgroup_size_x),
        };
        let mut tune = super::kernels::Tune::from_env();
        if info.device_type == wgpu::DeviceType::Cpu
            && std::env::var("GGUFQ_SPIN_WAIT").as_deref() != Ok("1")
        {
            // A CPU adapter (lavapipe) runs the kernels on the cores a spinning wait would
            // take from it.
            tune.spin_wait = false;
        }
        if info.device_type != wgpu::DeviceType::DiscreteGpu
            && std::env::var("GGUFQ_ATTN_WAIT").as_deref() != Ok("1")
        {
            // The joint QKV + attention dispatch's waits rely on workgroups starting in
            // index order: measured on a discrete GPU only (Tune::attn_wait).
            tune.attn_wait = false;
        }
        if tune.skip_roles != 0 {
            eprintln!(
                "warning: GGUFQ_SKIP_ROLES leaves dispatches out of every forward pass: timings only, every output of this run is wrong"
            );
        }
        Ok(GpuContext {
            device,
            queue,
            facts,
            max_binding,
            subgroup32,
            tune,
        })
    }

    /// The same device and queue with the kernel choices changed by `tune` (to compare
    /// engine variants on one adapter without opening it again).
    pub fn retuned(&self, tune: impl FnOnce(&mut super::kernels::Tune)) -> Arc<GpuContext> {
        let mut t = self.tune;
        tune(&mut t);
        Arc::new(GpuContext {
            device: self.device.clone(),
            queue: self.queue.clone(),
            facts: self.facts.clone(),
            max_binding: self.max_binding,
            subgroup32: self.subgroup32,
            tune: t,
        })
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::msg(format!("GPU poll failed: {e}")))?;
        Ok(())
    }

    /// Block until `done` is set by a callback that a poll of the device runs (a buffer
    /// map): with `Tune::spin_wait`, by polling without blocking in a loop (for at most
    /// [`SPIN_LIMIT`]); otherwise by one blocking poll (all submitted work done).
    pub fn wait_for(&self, done: &std::sync::atomic::AtomicBool) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.tune.spin_wait {
            return self.wait();
        }
        let start = std::time::Instant::now();
        while !done.load(Ordering::Acquire) {
            let st = self
                .device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::msg(format!("GPU poll failed: {e}")))?;
            if (st.is_queue_empty() && !done.load(Ordering::Acquire))
                || start.elapsed() > SPIN_LIMIT
            {
                // Nothing left to run, so the callback can only come from a blocking poll;
                // or spinning longer than a forward takes: finish as the blocking wait does.
                return self.wait();
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// Block until `done` is set by the callback of a buffer map that submission `idx`
    /// serves, leaving later submissions running: with `Tune::spin_wait` by polling without
    /// blocking (for at most [`SPIN_LIMIT`]), otherwise (or after that) by a blocking poll for
    /// that submission alone.
    pub fn wait_for_submission(
        &self,
        done: &std::sync::atomic::AtomicBool,
        idx: wgpu::SubmissionIndex,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        let start = std::time::Instant::now();
        while self.tune.spin_wait && !done.load(Ordering::Acquire) && start.elapsed() < SPIN_LIMIT {
            self.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::msg(format!("GPU poll failed: {e}")))?;
            std::hint::spin_loop();
        }
        if !done.load(Ordering::Acquire) {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(idx),
                    timeout: None,
                })
                .map_err(|e| Error::msg(format!("GPU poll failed: {e}")))?;
        }
        Ok(())
    }

    /// Read back `n` f32 values starting at element `offset` of a storage buffer
    /// (the buffer needs COPY_SRC usage).
    pub fn read_f32(&self, buf: &wgpu::Buffer, offset: u64, n: usize) -> Result<Vec<f32>> {
        let size = (n as u64) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, offset * 4, &staging, 0, size);
        self.queue.submit(Some(enc.finish()));
        self.map_read(&staging, size as usize)
    }

    /// Map a MAP_READ buffer (after its copy was submitted), wait, and read it as u64s.
    pub fn read_mapped_u64(&self, buf: &wgpu::Buffer) -> Result<Vec<u64>> {
        self.map_read(buf, buf.size() as usize)
    }

    /// Map a MAP_READ buffer, wait for the submitted work, copy its first `bytes` out as `T`s
    /// and unmap it.
    fn map_read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, bytes: usize) -> Result<Vec<T>> {
        let slice = buf.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::msg(format!("GPU readback channel: {e}")))?
            .map_err(|e| Error::msg(format!("GPU readback map failed: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::msg(format!("GPU readback view: {e:?}")))?;
            let bytes = view.get(..bytes).ok_or_else(|| {
                Error::msg(format!(
                    "GPU readback: {bytes} bytes asked of {}",
                    view.len()
                ))
            })?;
            bytemuck::cast_slice::<u8, T>(bytes).to_vec()
        };
        buf.unmap();
        Ok(out)
    }
}
