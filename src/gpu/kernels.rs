//! WGSL assembly and the pipeline cache. The per-type dequantization functions live in
//! `shaders/dequant.wgsl`, one section per ggml type; kernels are specialised by text
//! substitution (type, tokens per workgroup, reduction flavour) and compiled once.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

use super::device::GpuContext;

const DEQUANT_WGSL: &str = include_str!("../../shaders/dequant.wgsl");
const MATVEC_WGSL: &str = include_str!("../../shaders/matvec.wgsl");
const MATVEC_EPI_WGSL: &str = include_str!("../../shaders/matvec_epi.wgsl");
const RMSNORM_WGSL: &str = include_str!("../../shaders/rmsnorm.wgsl");

/// `shaders/rmsnorm.wgsl` adding its result to the output row instead of storing it
/// (`Y[t] += RMSNorm(X[t]) · w`, gemma3's post-norms, [`super::arch::ArchOp::NormAdd`]): the
/// same sums, the same per-value operations.
pub fn rmsnorm_add_source() -> Result<String> {
    const STORE: &str = "Y[base + i] = X[base + i] * inv * NW[i];";
    if !RMSNORM_WGSL.contains(STORE) {
        return Err(Error::msg("internal: rmsnorm.wgsl without its store"));
    }
    Ok(RMSNORM_WGSL.replace(
        STORE,
        "Y[base + i] = Y[base + i] + X[base + i] * inv * NW[i];",
    ))
}
const ROPE_WGSL: &str = include_str!("../../shaders/rope.wgsl");
const ATTENTION_WGSL: &str = include_str!("../../shaders/attention.wgsl");
const MATMAT_WGSL: &str = include_str!("../../shaders/matmat.wgsl");
const ATTN_DECODE_WGSL: &str = include_str!("../../shaders/attn_decode.wgsl");
const ATTN_DECODE_SEG_WGSL: &str = include_str!("../../shaders/attn_decode_seg.wgsl");
const ACTQ_WGSL: &str = include_str!("../../shaders/actq.wgsl");
const MATMAT_COOP_WGSL: &str = include_str!("../../shaders/matmat_coop.wgsl");
const ATTENTION_COOP_WGSL: &str = include_str!("../../shaders/attention_coop.wgsl");
const EMBED_WGSL: &str = include_str!("../../shaders/embed.wgsl");
const ARGMAX_WGSL: &str = include_str!("../../shaders/argmax.wgsl");

/// Whether `adapter` can run the cooperative-matrix mat-mat kernel: the experimental wgpu
/// feature, f16 shaders, a 16×16×16 f16 × f16 + f32 configuration, and subgroups of 32
/// (`subgroup32`); GGUFQ_COOP=0 says no.
pub fn coop_usable(adapter: &wgpu::Adapter, subgroup32: bool) -> bool {
    let info = adapter.get_info();
    let feat = adapter.features();
    subgroup32
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && std::env::var("GGUFQ_COOP").as_deref() != Ok("0")
        && feat.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && feat.contains(wgpu::Features::SHADER_F16)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            use wgpu::CooperativeScalarType as S;
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == S::F16
                && p.cr_type == S::F32
        })
}

/// How a ggml type is laid out on the GPU after upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLayout {
    /// Weights per ggml block (32 for float types: they are read in 32-weight units).
    pub block_elems: usize,
    /// Bytes per block in the file.
    pub block_bytes: usize,
    /// 32-bit words per block body on the GPU.
    pub body_words: usize,
    /// Byte offset of the f16 scale moved out of the block (types whose size is not a
    /// multiple of 4 bytes), or None when the block is uploaded unchanged.
    pub d_at: Option<usize>,
}

impl GpuLayout {
    /// 32-weight units per block.
    pub fn units_per_block(&self) -> usize {
        self.block_elems / 32
    }
}

/// The GPU layout of `ty`, or an error for a type the GPU kernels do not read.
pub fn layout(ty: GgmlType) -> Result<GpuLayout> {
    let (block_elems, block_bytes, body_words, d_at) = match ty.name() {
        "F32" => (32, 128, 32, None),
        "F16" => (32, 64, 16, None),
        "BF16" => (32, 64, 16, None),
        "Q4_0" => (32, 18, 4, Some(0)),
        "Q4_1" => (32, 20, 5, None),
        "Q5_0" => (32, 22, 5, Some(0)),
        "Q5_1" => (32, 24, 6, None),
        "Q8_0" => (32, 34, 8, Some(0)),
        "Q2_K" => (256, 84, 21, None),
        "Q3_K" => (256, 110, 27, Some(108)),
        "Q4_K" => (256, 144, 36, None),
        "Q5_K" => (256, 176, 44, None),
        "Q6_K" => (256, 210, 52, Some(208)),
        other => {
            return Err(Error::msg(format!(
                "the GPU engine has no kernel for tensor type {other}"
            )))
        }
    };
    Ok(GpuLayout {
        block_elems,
        block_bytes,
        body_words,
        d_at,
    })
}

/// The dequantization section of `dequant.wgsl` for `ty`, with `$W` → `buf`, `$S` → `suffix`
/// and `$DOFF` → `doff`.
pub fn deq_source(ty: GgmlType, buf: &str, suffix: &str, doff: &str) -> Result<String> {
    let tag = format!("// @type {} ", ty.name());
    let start = DEQUANT_WGSL
        .find(&tag)
        .ok_or_else(|| Error::msg(format!("no WGSL dequantizer for {}", ty.name())))?;
    let rest = &DEQUANT_WGSL[start..];
    let end = rest[tag.len()..]
        .find("// @type ")
        .map(|e| e + tag.len())
        .unwrap_or(rest.len());
    Ok(rest[..end]
        .replace("$W", buf)
        .replace("$S", suffix)
        .replace("$DOFF", doff))
}

/// Shape of the cooperative-matrix mat-mat kernel's workgroup tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CoopTile {
    /// Weight rows per workgroup (64 or 128).
    pub bm: u32,
    /// Tokens per workgroup (64 or 128).
    pub bn: u32,
    /// 32-weight units of K per stage (1 or 2): one pair of barriers per stage.
    pub ku: u32,
}

impl CoopTile {
    /// Rows × tokens of each of the 8 subgroups: 4 × 2 subgroups over rows × tokens when
    /// the tile has at least as many rows as tokens, else 2 × 4.
    pub fn subgroup_tile(&self) -> (u32, u32) {
        if self.bm >= self.bn {
            (self.bm / 4, self.bn / 2)
        } else {
            (self.bm / 2, self.bn / 4)
        }
    }

    /// 16 × 16 accumulators per subgroup.
    pub fn accumulators(&self) -> u32 {
        let (wr, wt) = self.subgroup_tile();
        (wr / 16) * (wt / 16)
    }

    /// Workgroup memory of the kernel in bytes with one set of stage buffers (f16 tiles of
    /// rows and tokens with a 16-byte pad per row, and 8 KiB for the accumulator epilogue).
    pub fn shared_bytes(&self) -> u32 {
        self.shared_bytes_with(1)
    }

    /// [`CoopTile::shared_bytes`] with `nbuf` sets of stage buffers.
    pub fn shared_bytes_with(&self, nbuf: u32) -> u32 {
        nbuf * (self.bm + self.bn) * (32 * self.ku + 8) * 2 + 8192
    }

    /// Stage buffers of the kernel: 2 (one barrier per stage) where prefetching and double
    /// buffering are on ([`Tune::coop_prefetch`], [`Tune::coop_db`]) and both fit in
    /// `shared` bytes of workgroup memory, else 1.
    pub fn stage_buffers(&self, tune: &Tune, shared: u32) -> u32 {
        if tune.coop_prefetch && tune.coop_db && self.shared_bytes_with(2) <= shared {
            2
        } else {
            1
        }
    }
}

/// The cooperative-matrix mat-mat kernel for `tile`: each of the 8 subgroups holds
/// [`CoopTile::accumulators`] accumulators of 16 × 16.
fn coop_source(
    tile: CoopTile,
    upb: usize,
    deq: &str,
    ty: GgmlType,
    prefetch: bool,
    raw_k: bool,
    nbuf: u32,
) -> String {
    let (wr, wt) = tile.subgroup_tile();
    let (nw, nx) = (tile.bm * tile.ku / 32, tile.bn * tile.ku / 32);
    let raw = if prefetch {
        coop_raw_loader(ty, raw_k)
    } else {
        None
    };
    let (mut init, mut stage, mut pre, mut post) =
        (String::new(), String::new(), String::new(), String::new());
    if prefetch {
        // Stage u0 + KU is read into registers while the subgroups multiply stage u0: the
        // input groups and the raw words of types with a raw loader before the products,
        // other weight types dequantized after them (the dequantization waits on its loads).
        for h in 0..nw {
            if raw.is_some() {
                init.push_str(&format!(
                    "    var wr_{h} = wraw({h}u, lid, 0u, row_base);\n"
                ));
                stage.push_str(&format!(
                    "        w_store({h}u, lid, wb, wdec(wr_{h}, {h}u, lid, u0, row_base));\n"
                ));
                pre.push_str(&format!(
                    "        wr_{h} = wraw({h}u, lid, u0 + KU, row_base);\n"
                ));
            } else {
                init.push_str(&format!(
                    "    var wv_{h} = wdeq({h}u, lid, 0u, row_base);\n"
                ));
                stage.push_str(&format!("        w_store({h}u, lid, wb, wv_{h});\n"));
                post.push_str(&format!(
                    "        wv_{h} = wdeq({h}u, lid, u0 + KU, row_base);\n"
                ));
            }
        }
        for h in 0..nx {
            init.push_str(&format!(
                "    var xr_{h} = x_load({h}u, lid, 0u, tok_base);\n"
            ));
            stage.push_str(&format!("        x_store({h}u, lid, xb, xr_{h});\n"));
            pre.push_str(&format!(
                "        xr_{h} = x_load({h}u, lid, u0 + KU, tok_base);\n"
            ));
        }
    } else {
        // Session 4: each stage loads, dequantizes and stores, then multiplies.
        stage.push_str(&format!(
            "        for (var h = 0u; h < {nw}u; h++) {{\n            w_store(h, lid, wb, wdeq(h, lid, u0, row_base));\n        }}\n"
        ));
        stage.push_str(&format!(
            "        for (var h = 0u; h < {nx}u; h++) {{\n            x_store(h, lid, xb, x_load(h, lid, u0, tok_base));\n        }}\n"
        ));
    }
    let (fr, fc) = ((wr / 16) as usize, (wt / 16) as usize);
    let (mut decl, mut mma, mut store) = (String::new(), String::new(), String::new());
    for i in 0..fr {
        mma.push_str(&format!(
            "            let a_{i} = coopLoadT<coop_mat16x16<f16, A>>(&Ws[wb + (rb + {}u) * LDW + kk], LDW);\n",
            16 * i
        ));
    }
    for j in 0..fc {
        mma.push_str(&format!(
            "            let b_{j} = coopLoad<coop_mat16x16<f16, B>>(&Xs[xb + (tb + {}u) * LDW + kk], LDW);\n",
            16 * j
        ));
    }
    for i in 0..fr {
        for j in 0..fc {
            decl.push_str(&format!("    var c_{i}_{j} = coop_mat16x16<f32, C>();\n"));
            mma.push_str(&format!(
                "            c_{i}_{j} = coopMultiplyAdd(a_{i}, b_{j}, c_{i}_{j});\n"
            ));
            store.push_str(&format!(
                "    coopStore(c_{i}_{j}, &Cs[sg * 256u], 16u);\n    workgroupBarrier();\n    epilogue(sg, lane, row_base + rb + {}u, tok_base + tb + {}u);\n    workgroupBarrier();\n",
                16 * i,
                16 * j
            ));
        }
    }
    MATMAT_COOP_WGSL
        .replace("$RAWLOAD", raw.unwrap_or(""))
        .replace("$NBUF", &nbuf.to_string())
        .replace("$BM", &tile.bm.to_string())
        .replace("$BN", &tile.bn.to_string())
        .replace("$KU", &tile.ku.to_string())
        .replace("$WR", &wr.to_string())
        .replace("$WT", &wt.to_string())
        .replace("$UPB", &upb.to_string())
        .replace("$ACC_DECL", &decl)
        .replace("$ACC_MMA", &mma)
        .replace("$ACC_STORE", &store)
        .replace("$PF_INIT", &init)
        .replace("$STAGE_STORE", &stage)
        .replace("$PF_PRE", &pre)
        .replace("$PF_POST", &post)
        .replace("$DEQ", deq)
}

/// Raw weight loader of the prefetching cooperative-matrix kernel for `ty`, where it has one
/// (Q4_0, Q8_0, Q2_K, Q4_K, Q6_K; [`Tune::coop_raw`]):
/// `wraw` reads the words of weight item h at stage u0 (no arithmetic, so the loads stay in
/// flight over the stage's products) and `wdec` dequantizes them as `deq4` does (the same
/// operations, so the same values) when the item is stored.
fn coop_raw_loader(ty: GgmlType, k_quants: bool) -> Option<&'static str> {
    match ty.name() {
        "Q2_K" | "Q4_K" | "Q6_K" if !k_quants => None,
        "Q8_0" => Some(
            "
fn wraw(h: u32, lid: u32, u0: u32, row_base: u32) -> vec2<u32> {
    let g = w_gu(h, lid, u0, row_base);
    return vec2<u32>(W[g.x * 8u + g.y % 8u], W[P.d_off + (g.x >> 1u)]);
}

fn wdec(r: vec2<u32>, h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    let d = unpack2x16float(r.y)[g.x & 1u];
    let q = bitcast<i32>(r.x);
    let v = vec4<f32>(f32((q << 24u) >> 24u), f32((q << 16u) >> 24u), f32((q << 8u) >> 24u), f32(q >> 24u));
    return select(vec4<f16>(0.0), vec4<f16>(d * v), w_live(h, lid, u0));
}
",
        ),
        "Q4_0" => Some(
            "
fn wraw(h: u32, lid: u32, u0: u32, row_base: u32) -> vec2<u32> {
    let g = w_gu(h, lid, u0, row_base);
    return vec2<u32>(W[g.x * 4u + (g.y & 3u)], W[P.d_off + (g.x >> 1u)]);
}

fn wdec(r: vec2<u32>, h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    let d = unpack2x16float(r.y)[g.x & 1u];
    let q = r.x >> (((g.y % 8u) >> 2u) * 4u);
    let v = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
    return select(vec4<f16>(0.0), vec4<f16>(d * (v - 8.0)), w_live(h, lid, u0));
}
",
        ),
        "Q2_K" => Some(
            "
fn wraw(h: u32, lid: u32, u0: u32, row_base: u32) -> vec3<u32> {
    let g = w_gu(h, lid, u0, row_base);
    let b = g.x / UPB;
    let sub = g.x % UPB;
    let j = g.y % 8u;
    let base = b * 21u;
    let is = 8u * (sub >> 2u) + 2u * (sub & 3u) + (j >> 2u);
    return vec3<u32>(W[base + 20u], W[base + (is >> 2u)], W[base + 4u + 8u * (sub >> 2u) + j]);
}

fn wdec(r: vec3<u32>, h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    let sub = g.x % UPB;
    let j = g.y % 8u;
    let dm = unpack2x16float(r.x);
    let jj = sub & 3u;
    let is = 8u * (sub >> 2u) + 2u * jj + (j >> 2u);
    let sc = (r.y >> ((is & 3u) * 8u)) & 0xffu;
    let q = r.z >> (2u * jj);
    let v = vec4<f32>(f32(q & 3u), f32((q >> 8u) & 3u), f32((q >> 16u) & 3u), f32((q >> 24u) & 3u));
    return select(vec4<f16>(0.0), vec4<f16>((dm.x * f32(sc & 15u)) * v - dm.y * f32(sc >> 4u)), w_live(h, lid, u0));
}
",
        ),
        "Q4_K" => Some(
            "
struct RawQ4K {
    s: vec4<u32>,
    q: u32,
}

fn wraw(h: u32, lid: u32, u0: u32, row_base: u32) -> RawQ4K {
    let g = w_gu(h, lid, u0, row_base);
    let b = g.x / UPB;
    let sub = g.x % UPB;
    let base = b * 36u;
    return RawQ4K(vec4<u32>(W[base], W[base + 1u], W[base + 2u], W[base + 3u]),
                  W[base + 4u + 8u * (sub >> 1u) + g.y % 8u]);
}

fn wdec(r: RawQ4K, h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    let sub = g.x % UPB;
    let dm = unpack2x16float(r.s.x);
    var sc: u32;
    var mn: u32;
    if (sub < 4u) {
        sc = (r.s.y >> (8u * sub)) & 63u;
        mn = (r.s.z >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (r.s.w >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((r.s.y >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((r.s.z >> (8u * t + 6u)) & 3u) << 4u);
    }
    let q = r.q >> (4u * (sub & 1u));
    let v = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
    return select(vec4<f16>(0.0), vec4<f16>((dm.x * f32(sc)) * v - dm.y * f32(mn)), w_live(h, lid, u0));
}
",
        ),
        "Q6_K" => Some(
            "
fn wraw(h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<u32> {
    let g = w_gu(h, lid, u0, row_base);
    let b = g.x / UPB;
    let sub = g.x % UPB;
    let j = g.y % 8u;
    let base = b * 52u;
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj + (j >> 2u);
    return vec4<u32>(W[P.d_off + (b >> 1u)], W[base + 16u * n + 8u * (jj & 1u) + j],
                     W[base + 32u + 8u * n + j], W[base + 48u + (is >> 2u)]);
}

fn wdec(r: vec4<u32>, h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    let b = g.x / UPB;
    let sub = g.x % UPB;
    let j = g.y % 8u;
    let jj = sub & 3u;
    let d = unpack2x16float(r.x)[b & 1u];
    let ql = r.y >> (4u * (jj >> 1u));
    let qh = r.z >> (2u * jj);
    let is = 8u * (sub >> 2u) + 2u * jj + (j >> 2u);
    let sc = f32(bitcast<i32>((r.w >> (8u * (is & 3u))) << 24u) >> 24u);
    let v = vec4<f32>(f32((ql & 15u) | ((qh & 3u) << 4u)), f32(((ql >> 8u) & 15u) | (((qh >> 8u) & 3u) << 4u)),
                      f32(((ql >> 16u) & 15u) | (((qh >> 16u) & 3u) << 4u)), f32(((ql >> 24u) & 15u) | (((qh >> 24u) & 3u) << 4u)));
    return select(vec4<f16>(0.0), vec4<f16>((d * sc) * (v - 32.0)), w_live(h, lid, u0));
}
",
        ),
        _ => None,
    }
}

/// Rows × tokens of one workgroup of the tiled mat-mat kernel for weight type id `ty` on `ctx`.
pub fn matmat_tile(ctx: &GpuContext, ty: u32) -> (u32, u32) {
    if ctx.facts.coop_matrix {
        let t = ctx.tune.coop_tile(ty);
        (t.bm, t.bn)
    } else {
        (64, 64)
    }
}

/// Relative error the mat-mat kernel may show against an f32 reference: f16 inputs on the
/// cooperative-matrix path (~2⁻¹¹ per product), f32 rounding otherwise.
pub fn matmat_tolerance(ctx: &GpuContext) -> f64 {
    if ctx.facts.coop_matrix {
        4e-3
    } else {
        1e-4
    }
}

/// Tokens per workgroup and keys per block of the tiled prompt attention for head size `hd`
/// (a multiple of 4, at most 256) with `shared` bytes of workgroup memory: `qt` tokens
/// (16 or 32, [`Tune::attn_qt`]) × 16 keys where its tiles fit (head size 128: 25 KiB for 16
/// tokens, 37 KiB for 32), else fewer. Errors when not even 4 × 8 fit.
pub fn attention_tile(hd: u32, shared: u32, qt: u32) -> Result<(u32, u32)> {
    if hd % 4 != 0 || hd == 0 || hd > 256 {
        return Err(Error::msg(format!(
            "attention: head size {hd} is not a multiple of 4 in 4..=256"
        )));
    }
    let hd4 = hd / 4;
    // Q tile, padded K block and V block (vec4s), two score arrays, per-token state.
    let bytes = |qt: u32, kb: u32| {
        16 * (qt * hd4 + kb * (hd4 + 1) + kb * hd4) + 4 * (2 * kb * qt + 5 * qt) + 8
    };
    [(qt, 16u32), (16, 16), (8, 16), (8, 8), (4, 8)]
        .into_iter()
        .filter(|&(q, _)| q <= qt.max(4))
        .find(|&(q, kb)| q * hd4 <= 1024 && bytes(q, kb) <= shared)
        .ok_or_else(|| {
            Error::msg(format!(
                "attention: head size {hd} needs {} bytes of workgroup memory, the adapter has {shared}",
                bytes(4, 8)
            ))
        })
}

/// Batch tokens per workgroup of the cooperative-matrix prompt attention
/// (`shaders/attention_coop.wgsl`).
pub const ATTN_COOP_QT: u32 = 64;
/// Keys per block of that kernel.
pub const ATTN_COOP_KB: u32 = 32;

/// Workgroup memory of the cooperative-matrix prompt attention for head size `hd` (bytes):
/// f16 K and transposed V blocks (the Q tile shares them) with 16-byte row pads, f32 score
/// tiles, f16 probabilities.
pub fn attention_coop_bytes(hd: u32) -> u32 {
    let (qt, kb) = (ATTN_COOP_QT, ATTN_COOP_KB);
    2 * attention_coop_kv(hd) + 4 * 2048 + 2 * qt * (kb + 8)
}

/// f16 values of that kernel's K/V array: the K block and the transposed V block, or the Q
/// tile where it is larger.
fn attention_coop_kv(hd: u32) -> u32 {
    let (qt, kb) = (ATTN_COOP_QT, ATTN_COOP_KB);
    (qt * (hd + 8)).max(kb * (hd + 8) + hd * (kb + 8))
}

/// Whether the cooperative-matrix prompt attention takes head size `hd` with `shared` bytes
/// of workgroup memory: a multiple of 16 up to 256 whose tiles fit.
pub fn attention_coop_fits(hd: u32, shared: u32) -> bool {
    hd % 16 == 0 && (16..=256).contains(&hd) && attention_coop_bytes(hd) <= shared
}

/// The prompt attention kernel for head size `hd` on `ctx` and its batch tokens per
/// workgroup: flash attention on cooperative matrices ([`KernelKey::AttentionCoop`]) where
/// the adapter has them, [`Tune::attn_coop`] is on and the head size fits
/// ([`attention_coop_fits`]); else the tiled f32 kernel ([`KernelKey::Attention`],
/// [`attention_tile`]).
pub fn attention_key(ctx: &GpuContext, hd: u32) -> Result<(KernelKey, u32)> {
    if ctx.facts.coop_matrix && ctx.tune.attn_coop && attention_coop_fits(hd, ctx.facts.shared_mem)
    {
        return Ok((KernelKey::AttentionCoop { hd }, ATTN_COOP_QT));
    }
    let (qt, kb) = attention_tile(hd, ctx.facts.shared_mem, ctx.tune.attn_qt)?;
    Ok((KernelKey::Attention { hd, qt, kb }, qt))
}

/// WGSL of the cooperative-matrix prompt attention for head size `hd`: each of the 4
/// subgroups keeps its 16 query rows as `hd / 16` A fragments, computes two 16 × 16 score
/// tiles per key block and accumulates `hd / 16` output tiles of 16 × 16.
fn attention_coop_source(hd: u32) -> Result<String> {
    if hd % 16 != 0 || !(16..=256).contains(&hd) {
        return Err(Error::msg(format!(
            "cooperative-matrix attention: head size {hd} is not a multiple of 16 in 16..=256"
        )));
    }
    let nf = hd / 16;
    let mut qload = String::new();
    for i in 0..nf {
        qload.push_str(&format!(
            "    var q_{i} = coopLoadT<coop_mat16x16<f16, A>>(&KV[rb * LDK + {}u], LDK);\n",
            16 * i
        ));
    }
    // Score tiles start from `zc` (zero at function scope, like the mat-mat kernel's): no
    // zero-valued coop matrix is stored inside a loop.
    let mut smma = String::new();
    for kc in 0..ATTN_COOP_KB / 16 {
        for i in 0..nf {
            let (lhs, acc) = if i == 0 {
                (format!("var s_{kc} = "), "zc".to_string())
            } else {
                (format!("s_{kc} = "), format!("s_{kc}"))
            };
            smma.push_str(&format!(
                "            {lhs}coopMultiplyAdd(q_{i}, coopLoad<coop_mat16x16<f16, B>>(&KV[{}u * LDK + {}u], LDK), {acc});\n",
                16 * kc,
                16 * i
            ));
        }
        smma.push_str(&format!(
            "            coopStore(s_{kc}, &Ss[sb + {}u], 16u);\n",
            256 * kc
        ));
    }
    let (mut odecl, mut ozero, mut pv, mut ostore) =
        (String::new(), String::new(), String::new(), String::new());
    for j in 0..nf {
        odecl.push_str(&format!("    var o_{j} = coop_mat16x16<f32, C>();\n"));
        ozero.push_str(&format!("        o_{j} = zc;\n"));
    }
    for kk in 0..ATTN_COOP_KB / 16 {
        pv.push_str(&format!(
            "            let p_{kk} = coopLoadT<coop_mat16x16<f16, A>>(&Ps[rb * LDP + {}u], LDP);\n",
            16 * kk
        ));
        for j in 0..nf {
            pv.push_str(&format!(
                "            o_{j} = coopMultiplyAdd(p_{kk}, coopLoad<coop_mat16x16<f16, B>>(&KV[VOFF + {}u * LDV + {}u], LDV), o_{j});\n",
                16 * j,
                16 * kk
            ));
        }
    }
    for j in 0..nf {
        ostore.push_str(&format!(
            "        coopStore(o_{j}, &Ss[sb], 16u);
        workgroupBarrier();
        for (var e = 0u; e < 8u; e++) {{
            let idx = lane + 32u * e;
            let t = t0 + rb + idx % 16u;
            if (of_seq(t, seq)) {{
                O[t * P.o_ld + h * HD + {}u + idx / 16u] = Ss[sb + idx];
            }}
        }}
        workgroupBarrier();
",
            16 * j
        ));
    }
    Ok(ATTENTION_COOP_WGSL
        .replace("$KVN", &attention_coop_kv(hd).to_string())
        .replace("$HD", &hd.to_string())
        .replace("$Q_LOAD", &qload)
        .replace("$S_MMA", &smma)
        .replace("$O_DECL", &odecl)
        .replace("$O_ZERO", &ozero)
        .replace("$PV_MMA", &pv)
        .replace("$O_STORE", &ostore))
}

/// Rows per warp of the decode kernel (x reuse across rows).
pub const NR_DECODE: u32 = 2;
/// Rows per warp of the small-batch kernel.
pub const NR_PROMPT: u32 = 4;
/// Tokens per workgroup of the small-batch kernel.
pub const NT_PROMPT: u32 = 8;

/// Kernel shape choices; defaults, overridable with environment variables for tuning runs
/// (GGUFQ_NR_DECODE, GGUFQ_NR_PROMPT, GGUFQ_NT_PROMPT, GGUFQ_MM_MIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tune {
    /// Rows per warp in the decode mat-vec (GGUFQ_NR_DECODE); 0 = per kernel: 4 with unit
    /// lanes, 2 with 4-weight-group lanes (the best of NR = 1/2/4 for each on an H100), 2
    /// for Q6_K (session 18, [`Tune::decode_nr`]).
    pub nr_decode: u32,
    /// Rows per warp in the small-batch kernel.
    pub nr_prompt: u32,
    /// Tokens per workgroup in the small-batch kernel.
    pub nt_prompt: u32,
    /// Batches of at least this many tokens use the tiled 64×64 mat-mat kernel.
    pub mm_min: u32,
    /// Mat-vec lanes take whole 32-weight units (8 groups of 4, one scale look-up, 8 loads
    /// of x in flight) instead of single 4-weight groups: None = by type ([`UNIT_TYPES`]),
    /// GGUFQ_DECODE_UNIT=1 / 0 forces one way for every type.
    pub unit_lanes: Option<bool>,
    /// Use the type's `udot` (unit dot product with integer unpacking) where dequant.wgsl has
    /// one (GGUFQ_UDOT=0: 8 × deq4 + dot instead).
    pub udot: bool,
    /// Round matrix inputs as the CPU backend's quantized activations ([`super::actq`]);
    /// GGUFQ_ACTQ=0 keeps f32 activations (the engine before session 3, for comparisons).
    pub act_round: bool,
    /// Rows per workgroup of the cooperative-matrix mat-mat kernel for every type
    /// (GGUFQ_COOP_BM: 64 or 128); 0 = per type ([`Tune::coop_tile`]).
    pub coop_bm: u32,
    /// Tokens per workgroup of that kernel (GGUFQ_COOP_BN: 64 or 128); 0 = default (128).
    pub coop_bn: u32,
    /// 32-weight units of K per stage of that kernel (GGUFQ_COOP_KU: 1 or 2); 0 = default (1).
    pub coop_ku: u32,
    /// Tokens per workgroup of the tiled prompt attention (GGUFQ_ATTN_QT: 16 or 32, default
    /// 32), where the adapter's workgroup memory holds them ([`attention_tile`]). H100, 7B
    /// Q4_K_M pp512: attention 16.2 ms per prompt with 16, 15.2 ms with 32.
    pub attn_qt: u32,
    /// Compile kernels without naga's bounds checks and loop bounding (the kernels clamp
    /// their own indices); GGUFQ_SHADER_CHECKS=1 keeps the checks.
    pub unchecked: bool,
    /// Units per lane per step of the unit-lane mat-vec loop (GGUFQ_UNROLL = 1, 2 or 4).
    pub unroll: u32,
    /// Split-K decode mat-vec, where the whole workgroup (256 lanes) shares the K range of
    /// NR rows and partial sums meet in workgroup memory, instead of each warp its own NR
    /// rows: 0 never, 1 (default) for K-quant matrices of ≥ 256 units per row (on an H100
    /// the 11008-long rows of ffn_down: Q4_K 588 → 886 GB/s, while 4096-long rows and Q8_0
    /// lose), 2 for every unit-lane type with ≥ 256 units (GGUFQ_SPLITK).
    pub splitk: u32,
    /// Record the next forward of the same batch shape while the GPU runs the current one
    /// (GGUFQ_PRERECORD=0: record each forward when it is called).
    pub prerecord: bool,
    /// One-token forwards use the fused decode graph (RMSNorm in the mat-vec prologue,
    /// RoPE and the KV store in the attention kernel); GGUFQ_FUSE=0 runs the batch graph.
    pub fuse: bool,
    /// Decode mat-vecs of the [`Q8_TYPES`] read the rounded activation as int8 quants with
    /// per-32 scales and multiply with `dot4I8Packed` (needs `act_round`); GGUFQ_Q8DOT=0
    /// keeps the f32 activation kernels.
    pub q8dot: bool,
    /// Lanes per row group of the integer decode kernel (GGUFQ_Q8_LANES: 32, 64, 128, 256;
    /// 0 = by row length, [`Tune::q8_lanes`]).
    pub q8_lanes: u32,
    /// The fused decode graph normalises and rounds each matrix group's input once, in a
    /// one-workgroup dispatch ([`KernelKey::NormQ8`]), for groups of [`Q8_TYPES`] matrices
    /// instead of in every workgroup's prologue (GGUFQ_NORMQ=0: in the prologue).
    pub normq: bool,
    /// Decode attention split over positions (flash-decoding): each head's positions in up
    /// to [`ATTN_MAX_CHUNKS`] chunks of at least this many positions, one workgroup per
    /// (head, chunk), partial results combined by the rounding of the attention output
    /// before `wo` ([`KernelKey::AttnCombineQ`], same dispatch count). GGUFQ_ATTN_SPLIT = 0
    /// keeps one workgroup per head and the separate rounding; 16, 32 (default), 64, 128.
    pub attn_split: u32,
    /// Most chunks per head of the split decode attention (GGUFQ_ATTN_CHUNKS: 16, the
    /// default [`ATTN_MAX_CHUNKS`], 32 or 64): at long contexts each chunk is a workgroup's
    /// share of the K/V rows.
    pub attn_chunks: u32,
    /// The split decode attention scores every position in every workgroup of a head, so
    /// that its probabilities are the unsplit kernel's (the same f16 roundings as the CPU
    /// backend) and only the V rows are split (default); GGUFQ_ATTN_EXACT=0: each chunk
    /// normalises against its own maximum and sum (flash-decoding proper: less work per
    /// workgroup in contexts over 256, a few wo-input roundings flip).
    pub attn_exact: bool,
    /// Positions (the last position + 1 of a one-token pass) up to which the exact split
    /// runs; past them the pass takes flash-decoding proper ([`long_context_key`]): every
    /// exact workgroup scores all positions of its head, which at 4096 positions read each K
    /// row 32 times (H100, 7B Q4_0 tg128 @ d4096: 76 t/s exact, 211 t/s). GGUFQ_ATTN_EXACT_MAX,
    /// default 256 (one position per thread in the exact kernel).
    pub attn_exact_max: u32,
    /// Flash-decoding chunks (past [`Tune::attn_exact_max`], or GGUFQ_ATTN_EXACT=0) score
    /// each K row with [`Tune::attn_klanes`] lanes, whose loads read 64 contiguous bytes of
    /// the f16 row (the exact split: one row per thread, 32 rows 8 KiB apart per load), this
    /// many rows per lane group in flight (GGUFQ_ATTN_COAL: 1 (default), 2, 4 or 8; 0: one
    /// row per thread as the exact split). H100, 7B Q4_0 tg128 @ d4096: 213 t/s with 0,
    /// 273 with 1, 257 with 4, 218 with 8 (fewer registers, more workgroups per SM).
    pub attn_coal: u32,
    /// V rows in flight per thread in the coalesced chunks (GGUFQ_ATTN_VROWS: 4, 8 or 16).
    pub attn_vrows: u32,
    /// Lanes per K row in the coalesced chunks (GGUFQ_ATTN_KLANES: 4, 8, 16 or 32; fewer
    /// where they do not divide the row's vec4 count).
    pub attn_klanes: u32,
    /// The coalesced scoring also in the exact split and the unsplit kernel (short
    /// contexts: every decode attention kernel scores K rows the same way, so the exact
    /// split keeps the unsplit kernel's bits); on by default (session 16, with
    /// [`Tune::attn_wait`]: fewer registers in the joint mat-vec + attention kernel; H100
    /// 7B tg128 equal to the one-row-per-thread scoring without the joint kernel, session
    /// 15); GGUFQ_ATTN_COAL_EXACT=0: one K row per thread.
    pub attn_coal_exact: bool,
    /// The split decode attention combines and rounds its own output for `wo`: the last
    /// workgroup of each group of 256 / head-size heads (a device-scope counter,
    /// [`KernelKey::AttnDecodeQ`]) runs the [`KernelKey::AttnCombineQ`] code for the group,
    /// so the decode graph has one dispatch per layer less (GGUFQ_ATTN_LASTWG=0: the
    /// separate combine dispatch). 1 (default) on, 0 off; 2 is a fault injected by the tests
    /// (the counters are never reset, so every layer after the first keeps a stale output).
    pub attn_lastwg: u32,
    /// Prompt attention on cooperative matrices (flash attention, [`KernelKey::AttentionCoop`])
    /// where the adapter has them; GGUFQ_ATTN_COOP=0 keeps the tiled f32 kernel
    /// (`shaders/attention.wgsl`, the only one without cooperative matrices).
    pub attn_coop: bool,
    /// The activation rounding (`shaders/actq.wgsl`) computes each block's scales once, in
    /// lanes of the first warp (its long divisions are most of the kernel's work), instead
    /// of in every thread; same values. GGUFQ_ACTQ_DIV=0: every thread (session 4).
    pub actq_div: bool,
    /// The cooperative-matrix mat-mat kernel reads the next stage's tiles into registers
    /// while its subgroups multiply the current one (raw words for Q4_0 / Q8_0, dequantized
    /// after the products for other types); GGUFQ_COOP_PF=0: load, store, then multiply.
    pub coop_prefetch: bool,
    /// Prompt forwards (2 or more tokens) look their embedding rows up on the GPU (token ids
    /// uploaded, rows dequantized by [`KernelKey::Embed`]) instead of dequantizing them on
    /// the CPU and uploading them; GGUFQ_GPU_EMBD=0: on the CPU. One-token forwards keep the
    /// CPU look-up (one row).
    pub gpu_embd: bool,
    /// With [`Tune::coop_prefetch`], the K-quants Q2_K, Q4_K and Q6_K also prefetch raw words
    /// (dequantized when stored, as Q4_0 / Q8_0 always are); GGUFQ_COOP_RAWK=0: those
    /// types dequantize after the products.
    pub coop_raw: bool,
    /// The batch graph's RMSNorm writes the rounded copy of its output for the matrices
    /// after it ([`KernelKey::NormRound`]) instead of a separate rounding dispatch (64 of
    /// the 129 per 7B prompt); GGUFQ_NORM_ROUND=0: separate.
    pub norm_round: bool,
    /// With [`Tune::coop_prefetch`], the cooperative-matrix mat-mat keeps two sets of stage
    /// buffers in workgroup memory (where they fit), so each stage needs one barrier instead
    /// of two (GGUFQ_COOP_DB=1). Off by default: on the H100 (session 5, 7B pp512) it was
    /// 11–17 % slower (Q4_0 5964 vs 6707 t/s, Q4_K_M 4793 vs 5790; 38 KiB of workgroup
    /// memory per workgroup instead of 23 KiB).
    pub coop_db: bool,
    /// The decode graph rounds the SwiGLU output in the `ffn_down` mat-vec itself: each lane
    /// quantizes the 32-value unit it dots from the f32 input in registers (Q8_K block maxima
    /// over 8 lanes), instead of a separate rounding dispatch before it
    /// ([`KernelKey::MatVecQ8F`] without norm). None (default) = by type
    /// ([`FOLD_ACTQ_TYPES`]); GGUFQ_FOLD_ACTQ=1 for every [`Q8_TYPES`] matrix, =0 never.
    pub fold_actq: Option<bool>,
    /// The decode graph normalises and rounds the input of the QKV, gate/up and output
    /// groups in the mat-vecs themselves (one workgroup reduction of Σx², then each lane its
    /// own unit in registers, [`KernelKey::MatVecQ8F`] with norm) instead of a one-workgroup
    /// [`KernelKey::NormQ8`] dispatch per group. Off by default (GGUFQ_FOLD_NORM=1 turns
    /// it on): on the H100 (session 5, 7B Q4_K_M) qkv took 2044 µs per token with it vs
    /// 792 µs after NormQ8, gate_up 3119 vs 932 (every workgroup reads and normalises the
    /// whole f32 row).
    pub fold_norm: bool,
    /// Decode calls of the same batch shape reuse the parameters and workgroup counts of
    /// the previous call instead of recomputing them (CPU time before each submit);
    /// GGUFQ_PARAM_CACHE=0 recomputes them every call.
    pub param_cache: bool,
    /// Rows per row group of the kernels that round their own input (GGUFQ_FOLD_NR: 1, 2,
    /// 4, 8, 16; 0 = default 8): every workgroup reads and rounds the whole f32 input, so
    /// more rows per workgroup read it fewer times. H100, 7B ffn_down µs per token with
    /// NR 4 / 8 / 16 (session 5): Q4_K_M 1154 / 978 / 1265, Q4_0 930 / 746 / 864, Q8_0
    /// 1173 / 1006 / 1082 (rounding dispatch + mat-vec: 921, 841, 1255).
    pub fold_nr: u32,
    /// The decode graph's SwiGLU mat-vec (`gate_up`, or `up` after a separate `gate`) rounds
    /// its output for `ffn_down` itself: one counter per activation block (32 values for
    /// Q8_0 / Q8_1, 256 for Q8_K); the workgroup that completes a block (last-workgroup
    /// hand-off, [`KernelKey::MatVecQ8E`]) rounds it with `actq.wgsl`'s operations, instead
    /// of a separate `actq` dispatch. Off by default (GGUFQ_LW_ACTQ=1 turns it on): on the
    /// H100 (session 6, 7B tg128 p50) it was no faster (Q4_K_M 3.63 vs 3.58 ms, Q4_0 3.17
    /// vs 3.15): `gate_up` took 5–6 µs longer per dispatch, as much as the rounding
    /// dispatch it removes.
    pub lw_actq: bool,
    /// The decode graph's residual mat-vecs (`wo`, `down`) normalise and round the new
    /// residual row for the next matrix group in their last workgroup (the body of
    /// [`KernelKey::NormQ8`], for every activation kind that group needs) instead of the
    /// `NormQ8` dispatch after them. Off by default (GGUFQ_LW_NORM=1 turns it on): on the
    /// H100 (session 6, 7B) `wo` took ~8 µs and `down` ~13 µs longer per dispatch, more
    /// than the NormQ8 dispatch they remove (tg128 p50 Q4_K_M 3.90 vs 3.58 ms).
    pub lw_norm: bool,
    /// How the epilogue kernels of [`Tune::lw_actq`] / [`Tune::lw_norm`] reach the outputs
    /// that cross workgroups (GGUFQ_LW_ATOMIC): 1 (default) every access of the output
    /// buffer atomic (device scope, past the non-coherent L1): exact on the H100 (256
    /// decode steps of 7B Q4_K_M and Q4_0 bit for bit); 2 only the stores' own reads (the
    /// residual, the gate) atomic, stores and the last workgroup's reads plain: not exact
    /// there (Q4_0: 12 of 256 steps differ), no faster; 0 every access plain: the last
    /// workgroup reads stale values (256 of 256 steps differ). Plain `storageBarrier()`
    /// is thus not enough for plain loads on that stack.
    pub lw_atomic: u32,
    /// The activation rounding (`shaders/actq.wgsl`: the `actq` dispatch, the combine
    /// dispatch and the decode attention's epilogue) takes its block maxima with
    /// `subgroupMax` and packs the int8 quants with subgroup shuffles where the adapter has
    /// 32-wide subgroups: no barrier for Q8_0 blocks, one for Q8_K (the tree: 5 and 8, plus
    /// one for the scales and one for the packing); same values bit for bit.
    /// GGUFQ_ACTQ_SUB: 1 (default) on, 0 the workgroup-memory tree; 2 (tests) the subgroup
    /// code with the builtins emulated in workgroup memory, on any adapter.
    pub actq_sub: u32,
    /// The block scales of those roundings are divided by `div_fast` (the f32 quotient as an
    /// estimate of the 25-bit quotient, corrected with the exact integer remainder) instead
    /// of `div_rn`'s 25-step long division: the same correctly rounded quotient.
    /// GGUFQ_ACTQ_FASTDIV=0: the long division.
    pub actq_fastdiv: bool,
    /// Tests only (0 in the engine): added to `div_fast`'s estimate, which its correction
    /// must undo.
    pub div_skew: i32,
    /// The decode attention's epilogue ([`KernelKey::AttnDecodeQ`], exact split) reads only
    /// the live chunks of each head (the others hold +0.0, which the combine would add),
    /// with all loads issued before the sum; same sum bit for bit. GGUFQ_ATTN_LIVE: 1
    /// (default) on, 0 all [`ATTN_MAX_CHUNKS`] chunks in a loop, as the combine dispatch; 2
    /// is a fault injected by the tests (one live chunk too few).
    pub attn_live: u32,
    /// With [`Tune::attn_live`], the decode attention's workgroups of chunks past the last
    /// position return at once (no zero partial result, no arrival; the counter waits for
    /// the live chunks), instead of writing an empty result and arriving. GGUFQ_ATTN_SKIP=0:
    /// they arrive. (tg128 at the 7B shape: 4 of 16 chunks per head live at most.)
    pub attn_skip: bool,
    /// The decode attention loads the K row of each thread's first scored position (bit 2)
    /// and the V rows of its first four accumulated positions (bit 1) into registers before
    /// the new token's Q/K/V phase, so that their memory latency overlaps it; the same
    /// arithmetic in the same order, through the same code path (session 8: with separate
    /// paths the H100's compiler contracted them differently). GGUFQ_ATTN_PRE: 0 none
    /// (default since session 8: after its final table, 7B tg128 with 0 was equal or
    /// faster in 4 of 6 pairs, Q2_K +2 to +4 %), 1 V, 2 K, 3 both.
    pub attn_pre: u32,
    /// The KV cache holds f32 values instead of f16 halves (GGUFQ_KV_F32=1; off by default).
    /// Every value stored is rounded to f16 first, as llama.cpp's f16 cache and the CPU
    /// backend round it, so both give the same logits bit for bit; f16 takes half the memory
    /// and half the attention's K/V loads ([`kv_storage`]).
    pub kv_f32: bool,
    /// One-token forwards wait for their logits by polling the device in a loop
    /// (`PollType::Poll`) until the read-back's map callback has fired, instead of one
    /// blocking `poll(wait)`, as CUDA's default stream synchronisation spins; it keeps a
    /// CPU core busy while the GPU runs (GGUFQ_SPIN_WAIT=0: the blocking wait; off by
    /// default on CPU adapters such as lavapipe, whose kernels run on those cores). H100, 7B
    /// tg128 (session 7): the GPU idles 112 µs (p50) between two passes instead of 255
    /// (Q4_K_M), the wake-up after the pass and the host phases after it both shorter;
    /// Q4_K_M 289.2 → 301.6 t/s, Q4_0 332.6 → 345.9, Q8_0 229.2 → 236.7.
    pub spin_wait: bool,
    /// Passes of [`GpuModel::decode_greedy`](super::GpuModel::decode_greedy) submitted
    /// ahead of the one whose logits the host reads (GGUFQ_GREEDY_DEPTH: 2, 3 or 4; default
    /// 2: one pass queued behind the running one). A deeper queue rides out longer host
    /// stalls at one read-back buffer per pass.
    pub greedy_depth: u32,
    /// Passes of [`GpuModel::decode_greedy`](super::GpuModel::decode_greedy) handed to the
    /// queue in one submit (GGUFQ_GREEDY_GROUP: 1 (default), 2, 4 or 8; the passes in
    /// flight grow to at least twice this), as separate command buffers or, with
    /// [`Tune::greedy_cb`], one. The host reads each group's tokens when its last pass is done.
    pub greedy_group: u32,
    /// A group of greedy passes ([`Tune::greedy_group`]) is recorded into one command buffer
    /// (GGUFQ_GREEDY_CB=1) instead of one per pass.
    pub greedy_cb: bool,
    /// Weight chunks are sub-allocated in pooled buffers of at most this many bytes (each
    /// chunk at an offset aligned to `min_storage_buffer_offset_alignment` and at least 256
    /// bytes, bound with offset and size), so a submit tracks a few large buffers instead
    /// of one per chunk (GGUFQ_WEIGHT_POOL=MiB, default 0 = one buffer per chunk). Off by
    /// default: on the H100 (session 7, 7B Q4_0) the GPU pass was 71 µs slower with pooled
    /// weights (2823 vs 2752 µs), more than the submit saved (23 vs 32–68 µs).
    pub weight_pool: u64,
    /// Offset alignment of the pooled weight chunks in bytes (GGUFQ_POOL_ALIGN, a power of
    /// two; default 256, never below the adapter's `min_storage_buffer_offset_alignment`).
    pub pool_align: u64,
    /// One-token forwards upload their embedding row and token table through two
    /// persistently owned MAP_WRITE buffers (mapped while the GPU runs the previous token,
    /// copied at the start of the command buffer) instead of two `queue.write_buffer`s,
    /// each of which creates a staging buffer (GGUFQ_UPLOAD_RING=1; default off). H100, 7B
    /// (session 7): prepare 22 → 7–11 µs per token, but tg128 with the spinning wait was
    /// lower with it in 5 of 6 comparisons (helper cpu: Q4_K_M 297.4 vs 301.6, Q4_0 343.5 vs
    /// 345.9, Q8_0 239.5 vs 236.7; lead, after the final table: 302.4 vs 306.4, 361.9 vs
    /// 363.6, 255.1 vs 257.3), so it is off.
    pub upload_ring: bool,
    /// L2 prefetch in the decode graph: after each latency-bound step (NormQ8, the decode
    /// attention, a rounding) that a mat-vec group follows, a [`KernelKey::Prefetch`]
    /// dispatch reads the first MiB of that group's weights (this many per group, 0 = off;
    /// GGUFQ_PREFETCH_MB) so that the HBM streams them into the L2 cache while the small
    /// step runs, with no barrier between the two; the mat-vec then finds them there.
    pub prefetch_mb: u32,
    /// The decode graph's attention by output segment ([`KernelKey::AttnDecodeS`]: one
    /// workgroup per 256 output values scores, weighs and rounds them for `wo`, no split)
    /// where the split attention's last-workgroup epilogue would run and the scores fit in
    /// workgroup memory (GGUFQ_ATTN_SEG=1 on, 0 off).
    pub attn_seg: bool,
    /// Timing experiments only: the decode and batch graphs leave out every dispatch whose
    /// role is in this set (bits of [`SKIPPABLE_ROLES`], GGUFQ_SKIP_ROLES=attention,norm_q8,…),
    /// so a tg run shows what those dispatches cost inside the pipelined pass. The outputs
    /// are then wrong: `ggufq bench` says so on stderr. `--profile`'s pass per dispatch keeps
    /// every dispatch. 0 (default) = none.
    pub skip_roles: u32,
    /// Per-type overrides of [`Tune::q8_lanes`] (GGUFQ_Q8_LANES_T, e.g. `Q6_K=256,Q8_0=64`;
    /// up to [`TYPE_OVERRIDES`] entries of type id and value, type id `u32::MAX` unused).
    /// For tuning runs: a listed type's integer decode mat-vecs take these lanes, the SwiGLU
    /// rounding kernel too unless [`Tune::swiglu_q_lanes`] sets its own.
    pub q8_lanes_t: [(u32, u32); TYPE_OVERRIDES],
    /// Per-type overrides of [`Tune::nr_decode`] (GGUFQ_NR_DECODE_T, same form).
    pub nr_decode_t: [(u32, u32); TYPE_OVERRIDES],
    /// Invocations of the greedy argmax's one workgroup ([`KernelKey::Argmax`],
    /// GGUFQ_ARGMAX_WG: 256, 512 or 1024; halved where the adapter allows fewer).
    /// Default 1024: four loads per thread and step, 8 steps over a 32000-entry vocabulary
    /// where 256 invocations took 125 dependent ones.
    pub argmax_wg: u32,
    /// Rows per lane group of [`KernelKey::MatVecQ8N`] (GGUFQ_BLOCK_NORM_NR: 1, 2, 4 or 8;
    /// 0 (default) = by type, [`Tune::block_norm_nr_for`]; the lanes per row follow, `wg` ·
    /// NR / 32, as a workgroup owns 32 rows).
    pub block_norm_nr: u32,
    /// Workgroup size and rows per lane group of [`KernelKey::MatVecQ8N`] over rows of 256
    /// or more 32-weight units (`ffn_down` of the 7B shape; GGUFQ_BLOCK_NORM_WG_LONG,
    /// GGUFQ_BLOCK_NORM_NR_LONG; 0 = those of the shorter rows).
    pub block_norm_long: (u32, u32),
    /// Workgroups of the persistent decode mat-vecs ([`KernelKey::MatVecQ8P`]) that build
    /// their own rounded input, replacing the NormQ8 dispatches and the rounding before
    /// `ffn_down` (GGUFQ_MV_PERSIST; 0 = off: separate dispatches).
    pub persist: u32,
    /// Decode mat-vecs that build their own rounded input in their first workgroups
    /// ([`KernelKey::MatVecQ8W`], GGUFQ_MV_WAIT, bits): 1 the NormQ8 step before a mat-vec,
    /// 2 the rounding before `ffn_down`, 4 every workgroup also loads its first weights
    /// before it waits for the input. 0 (default) = separate dispatches.
    pub mv_wait: u32,
    /// The integer decode mat-vecs of Q4_K take a pair of units (the two sub-blocks that
    /// share their quant bytes) per lane and loop step (`idot2`, GGUFQ_Q8_PAIR=1; lanes as for
    /// half the units); 0 (default) one unit.
    pub q8_pair: bool,
    /// The integer decode mat-vecs bind their weights as `array<vec4<u32>>` and load each
    /// group of 4 words the dequantizer reads together as one 128-bit load
    /// ([`wide_weights`]): 1 (default) for [`WIDE_DEFAULT_TYPES`], 2 for every type of
    /// [`WIDE_TYPES`], 0 never (GGUFQ_WIDE). H100, 7B tg128 (session 7, two runs each):
    /// Q8_0 219.0 / 222.2 → 235.3 / 239.2 t/s, Q4_0 324.9 / 314.3 → 339.0 / 325.5, while
    /// Q4_K_M (mostly Q4_K, Q6_K) went 290.0 / 282.1 → 281.3 / 282.7 (ffn_down slower).
    pub wide: u32,
    /// The integer decode mat-vecs compile the row length in ([`KernelKey::MatVecQ8U`]):
    /// each lane's steps unrolled, all loads issued before the sums; same sums bit for bit
    /// (GGUFQ_MV_CONST=1 on, 0 off).
    pub mv_const: bool,
    /// The decode graph's SwiGLU mat-vec (`gate_up`, or `up` after a separate `gate`) owns
    /// whole activation blocks (Q8_0: 32 outputs = 64 interleaved gate/up rows per
    /// workgroup) and rounds them itself ([`KernelKey::MatVecQ8R`]: the quants and scales of
    /// the `actq` dispatch, bit for bit), so the rounding dispatch before `ffn_down` goes
    /// (GGUFQ_SWIGLU_Q): 0 off (the default with GGUFQ_BLOCK_NORM=0), 1 (the default with
    /// [`Tune::block_norm`], in workgroups of 1024: H100 7B tg128 p50 Q4_0 2.54 → 2.50 ms,
    /// Q8_0 3.55 → 3.51 in two rounds, session 14) where `ffn_down` reads Q8_0 blocks (and then
    /// instead of the consumer's fold, [`Tune::fold_actq`]), 2 also Q8_K blocks (256
    /// outputs, 512 rows per workgroup). Off because it was slower on the H100 (session 8,
    /// 7B tg128): 344 workgroups for `gate_up` instead of 2752 cost more than the 32
    /// dispatches it removes (Q4_0 333–343 t/s over five lane/row shapes vs 347–350 off,
    /// Q8_0 249.7 vs 253.6 with the fold).
    pub swiglu_q: u32,
    /// Lanes per row group and rows per lane of that kernel (GGUFQ_SWIGLU_Q_LANES: 32, 64,
    /// 128, 256; GGUFQ_SWIGLU_Q_NR: 1, 2, 4, 8; 0 = those of the plain decode mat-vec); a
    /// workgroup runs its row groups in as many passes as one block's rows need.
    pub swiglu_q_lanes: u32,
    /// See [`Tune::swiglu_q_lanes`].
    pub swiglu_q_nr: u32,
    /// Invocations per workgroup of that kernel (GGUFQ_SWIGLU_Q_WG: 256, 512 or 1024; 512
    /// by default with [`Tune::block_norm`], else 256; larger than the adapter allows: the
    /// rounding dispatch stays). Session 14 (H100, with block norm): 128 lanes × NR 4 in
    /// 1024 (two passes of 32 rows) beat NR 8 (one pass of 64 rows) by 2–3 % on Q4_0.
    /// Session 17 (H100, 7B tg128 p50, one process per shape): workgroups of 512 (64 rows
    /// each in passes, 344 `gate_up` workgroups that all fit at once instead of 1.3 waves
    /// of 1024-invocation ones) Q4_0 2.49 → 2.36 ms with 64 lanes × NR 4 (2.38 with 128,
    /// 2.36 with 32, 2.60 with 256), Q8_0 3.49 → 3.44 with 128 lanes × NR 4 (3.46 with 64);
    /// so Q4_0 takes 64 lanes per row when [`Tune::swiglu_q_lanes`] is 0, other types the
    /// plain mat-vec's.
    pub swiglu_q_wg: u32,
    /// The decode graph's K-quant `ffn_down` (Q2_K … Q6_K) reads its input rounded in
    /// 32-value blocks with an f16 scale (the Q8_0 rounding, as llama.cpp's CUDA mmvq reads
    /// q8_1 blocks for every K-quant) instead of Q8_K blocks of 256, so that the SwiGLU
    /// mat-vec can round it ([`Tune::swiglu_q`]). Not the CPU backend's numerics (close to
    /// them: a finer scale, as close to unrounded activations). GGUFQ_SWIGLU_Q32K=1 turns
    /// it on with [`Tune::swiglu_q`] ≠ 0 (default off: 7B Q4_K_M tg128 285.8 vs 303.0 t/s
    /// on the H100, session 8).
    pub swiglu_q32k: bool,
    /// Decode mat-vecs of one group whose matrices have different types (Q+K and V of the
    /// Q4_K_M and Q2_K mixes) or several weight chunks, over the same rounded input, run as
    /// one dispatch ([`KernelKey::MatVecQ8Multi`]): 0 separate dispatches, 1 the matrices'
    /// workgroups one range after the other, 2 interleaved in proportion (GGUFQ_QKV_MULTI).
    pub qkv_multi: u32,
    /// Block-rounding residual mat-vecs (on by default; GGUFQ_BLOCK_NORM=0 turns them off):
    /// the decode `wo` / `ffn_down` mat-vec whose workgroups own 32 consecutive residual rows
    /// ([`KernelKey::MatVecQ8N`]) adds them to the residual and rounds the next RMSNorm's
    /// input itself, in 32-value blocks and without the 1/rms factor (the rounding is scale
    /// invariant), with each block's Σx² beside it; the mat-vecs that read it
    /// ([`KernelKey::MatVecQ8S`]) multiply their sums by 1/rms from those partial sums. The
    /// NormQ8 dispatch between the two leaves the decode graph. Not the CPU backend's
    /// numerics bit for bit (32-value blocks for K-quants too, the factor applied after the
    /// dot product), within its tolerances. H100, 7B tg128 (session 14): Q4_0 370 → 392
    /// t/s, Q4_K_M 329 → 341, Q8_0 263 → 281, Q2_K 359 → 388, hybrid 345 → 344.
    pub block_norm: bool,
    /// Invocations per workgroup of [`KernelKey::MatVecQ8N`] (GGUFQ_BLOCK_NORM_WG: 256, 512,
    /// 1024 default where the adapter allows it): 4 rows per lane group, `wg` / 8 lanes per
    /// row, so always 32 rows per workgroup.
    pub block_norm_wg: u32,
    /// [`KernelKey::MatVecQ8N`]'s rounding with 32-wide subgroups (GGUFQ_BLOCK_NORM_EPI):
    /// 0 (default) through workgroup memory (the text adapters without subgroups run), 1 one
    /// warp with subgroup maximum / sum / shuffles (H100, session 14, with `block_norm_rs`
    /// 1: tg128 p50 1–2 % slower than both at 0).
    pub block_norm_epi: u32,
    /// How [`KernelKey::MatVecQ8S`] sums the partial Σx² with 32-wide subgroups
    /// (GGUFQ_BLOCK_NORM_RS): 0 (default) warp 0 loops over all of them before its weight
    /// loads; 1 one load per thread, warp sums added after the loop.
    pub block_norm_rs: u32,
    /// The decode attention runs in the QKV mat-vec's dispatch ([`KernelKey::MatVecAttn`]):
    /// the mat-vec's row groups run in KV-head order and count themselves per KV head; the
    /// attention's workgroups come after them and each head waits for its KV head's count,
    /// instead of a barrier and a dispatch of its own. The rows cross workgroups through
    /// atomic stores and loads ([`atomic_f32_access`]). On by default on discrete GPUs
    /// (which start workgroups in index order, so the waiting ones cannot hold back the
    /// ones they wait for; `GpuContext::new` turns it off elsewhere),
    /// GGUFQ_ATTN_WAIT=0 off, =1 on any adapter where [`super::model::wait_is_ordered`].
    /// Used within the exact split only: past [`Tune::attn_exact_max`] positions the two
    /// dispatches run (`model::pass_step_key`; the joint flash-decoding form differed from
    /// them in a few H100 kernel-check steps). H100, 7B tg128 (session 16): +0.8–1.0 %
    /// Q4_0, +0.6–0.7 % Q8_0 (with one counter for all heads and the one-row-per-thread
    /// scoring 16 % slower, session 15). Session 15's plain stores and loads of the rows made
    /// three `--kernel-check` comparisons differ on the H100 (stale rows past the L1); with
    /// the atomics every line agrees bit for bit.
    pub attn_wait: bool,
    /// With [`Tune::attn_wait`]: every attention workgroup waits for all KV heads' row
    /// groups (GGUFQ_ATTN_WAIT_ALL=1; a diagnostic form: the attention then starts after the
    /// whole mat-vec, as with the barrier). Off by default.
    pub attn_wait_all: bool,
    /// With [`Tune::attn_wait`]: two-part QKV dispatches (Q+K, then V of a type of its own:
    /// Q4_K_M's and Q2_K's layers with a Q6_K / Q3_K V) are joined too
    /// (GGUFQ_ATTN_WAIT_MULTI=1). Off by default: on the H100 (session 16, 7B tg128 p50)
    /// Q4_K_M 2.92 → 2.95 ms, Q2_K 2.54 → 2.54, hybrid 2.82 → 2.77, and `--kernel-check` on
    /// Q4_K_M found 8 of 300 steps differing from the two dispatches past position 288 (up
    /// to 1.6e-3 in the logits). Those were then traced to the joint kernel's flash-decoding
    /// form, which is no longer used; the two-part join has not been re-checked on the H100
    /// since. On lavapipe it agrees bit for bit (tests/gpu_attn_wait.rs).
    pub attn_wait_multi: bool,
    /// With [`Tune::attn_wait`]: QKV mat-vecs of K-quant types (Q2_K … Q6_K) are joined too
    /// (GGUFQ_ATTN_WAIT_K=1). Off by default: on the H100 (session 17, 7B tg128, one process
    /// per setting, two rounds) Q4_K_M, whose 16 one-matrix Q4_K QKV layers took the joint
    /// kernel, ran at 333.3 / 333.9 t/s (p50 2.99 ms) joined against 341.7 / 341.8 (2.92)
    /// apart, while Q4_0 (+0.2 %) and Q8_0 (+0.5 %) gained.
    pub attn_wait_kquant: bool,
    /// With [`Tune::attn_wait`]: the exact split inside the QKV dispatch cuts each head's
    /// positions into chunks of at least this many (fewer chunks, as many as the context
    /// needs but at least 2, of the attention's [`Tune::attn_split`] buffers), so fewer
    /// attention workgroups wait beside the mat-vec's. None (default) = by the QKV matrix's
    /// type ([`JOINT_SPLIT_TYPES`]); GGUFQ_ATTN_SPLIT_JOINT=N for every type (0 keeps the
    /// attention's own chunks; 32, 64, 128, 256). H100, 7B tg128 p50 (session 20): Q8_0 3.36
    /// → 3.30 ms with 128, Q4_0 2.35 → 2.37–2.38 (slower). The V rows add up in another
    /// grouping, so logits differ from the two-dispatch graph of [`Tune::attn_split`] in
    /// rounding; they equal those of the attention split at the joint length.
    pub attn_split_joint: Option<u32>,
    /// Consecutive decode mat-vecs in one dispatch ([`KernelKey::MatVecJoin`]): `wo` →
    /// `gate_up` (2) or `wo` → `gate_up` → `ffn_down` (3), where they are the block-rounding
    /// residual and rounding SwiGLU kernels of one workgroup size (Q4_0, Q8_0 layers); each
    /// part's workgroups wait for the previous part's on a counter and copy its packed
    /// output into workgroup memory (GGUFQ_MV_JOIN = 0 off, 2 or 3). Only where workgroups
    /// start in index order ([`super::model::wait_is_ordered`]). Off by default (slower on
    /// the H100, session 17); since the SwiGLU kernel's workgroups are 512 by default
    /// ([`Tune::swiglu_q_wg`]) it needs GGUFQ_SWIGLU_Q_WG=1024 to find parts of one size.
    pub mv_join: u32,
}

/// `wg` (256 … 1024) halved until the adapter allows it (None below 256).
pub(super) fn fit_wg(ctx: &GpuContext, wg: u32) -> Option<u32> {
    let mut wg = wg.clamp(256, 1024);
    while wg > ctx.facts.max_wg_threads {
        wg /= 2;
    }
    (wg >= 256).then_some(wg)
}

/// WGSL of [`KernelKey::Argmax`] in workgroups of [`Tune::argmax_wg`] invocations, halved
/// until the adapter allows them ([`fit_wg`]; 256, the least every adapter has, otherwise).
fn argmax_source(ctx: &GpuContext) -> String {
    let wg = fit_wg(ctx, ctx.tune.argmax_wg).unwrap_or(256);
    ARGMAX_WGSL.replace("$WG", &wg.to_string())
}

/// Bytes one [`KernelKey::Prefetch`] workgroup reads: 256 threads × 4 loads of 16 bytes,
/// all issued before any is used.
pub const PREFETCH_WG_BYTES: u64 = 256 * 4 * 16;

/// WGSL of [`KernelKey::Prefetch`]. The loads' XOR is compared with a value only known at
/// run time (the binding's length), so the compiler cannot drop them; a match (about one
/// in 2^32 workgroups, harmless) writes the XOR to the scratch word.
const PREFETCH_WGSL: &str = "
@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> S: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&W);
    let i0 = wg.x * 1024u + lid;
    let a = W[min(i0, n - 1u)];
    let b = W[min(i0 + 256u, n - 1u)];
    let c = W[min(i0 + 512u, n - 1u)];
    let d = W[min(i0 + 768u, n - 1u)];
    let v = (a ^ b) ^ (c ^ d);
    let x = (v.x ^ v.y) ^ (v.z ^ v.w);
    if (x == n) {
        S[0] = x;
    }
}
";

/// Workgroups of a [`KernelKey::Prefetch`] dispatch over `bytes`.
pub fn prefetch_workgroups(bytes: u64) -> u32 {
    bytes.div_ceil(PREFETCH_WG_BYTES).clamp(1, 65535) as u32
}

/// Most chunks per head of the split decode attention by default ([`Tune::attn_chunks`]).
pub const ATTN_MAX_CHUNKS: u32 = 16;

/// Workgroup memory of the decode attention with `ctx` score entries: the scores, the
/// reductions, Q/K/V of the new token, the V partial sums; with `epilogue`
/// ([`KernelKey::AttnDecodeQ`]) also the rounding's quants, scales and flag.
pub fn attn_decode_shared_bytes(ctx: u32, epilogue: bool) -> u32 {
    4 * ctx + 1024 + 3 * 1024 + 4096 + 4 + if epilogue { 1024 + 32 + 64 + 4 } else { 0 }
}

/// Workgroup memory of [`KernelKey::AttnDecodeS`] for a context of `ctx` positions and head
/// size `hd`: scores of 256 / hd heads, the reductions, Q/K/V rows, V partial sums, the 256
/// outputs and the rounding's own arrays.
pub fn attn_seg_shared_bytes(ctx: u32, hd: u32) -> u32 {
    4 * ctx * (256 / hd.max(1)) + 1024 + 3 * 1024 + 4096 + 1024 + 1024 + 32 + 64
}

/// Head sizes [`KernelKey::AttnDecodeS`] takes: whole heads per 256-value segment, whole
/// vec4 rows, at least 16.
fn attn_seg_head_ok(hd: u32) -> bool {
    hd >= 16 && hd % 4 == 0 && 256 % hd == 0
}

/// Whether [`KernelKey::AttnDecodeS`] can run a model of head size `hd` and `q_dim` attention
/// output values per token in a context of `ctx` positions on `c`'s adapter.
pub fn attn_seg_fits(c: &GpuContext, ctx: u32, hd: u32, q_dim: u32) -> bool {
    attn_seg_head_ok(hd) && q_dim % 256 == 0 && attn_seg_shared_bytes(ctx, hd) <= c.facts.shared_mem
}

/// Weight types whose `ffn_down` decode mat-vec rounds its own input by default
/// ([`Tune::fold_actq`]). H100, 7B tg128 (session 5, NR 8): Q8_0 212.2 → 221.5 t/s, while
/// Q4_K_M (274.1 → 266.7) and Q4_0 (316.3 → 307.6) lost.
pub const FOLD_ACTQ_TYPES: &[&str] = &["Q8_0"];

/// QKV types whose dispatch runs the attention in longer chunks by default
/// ([`Tune::attn_split_joint`]), with the chunk length.
pub const JOINT_SPLIT_TYPES: &[(&str, u32)] = &[("Q8_0", 128)];

/// Types with an integer decode kernel (`idot` in dequant.wgsl): their activations are Q8_0
/// (Q4_0, Q8_0) or Q8_K (K-quants) blocks on the CPU, whose int8 quants the kernel reads.
pub const Q8_TYPES: &[&str] = &["Q4_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"];

/// Types whose decode kernel uses unit lanes by default. In the session-2 H100 run every
/// whole-model tg128 with unit lanes (all types) was faster than or equal to session 1's
/// group lanes (Q4_K_M 87.9 → 126.8 t/s, Q4_0 116.6 → 143.8, Q8_0 119.3 → 123.2), and the
/// kernel bench agreed for Q4_K (653 vs 434 GB/s) and Q4_0 (669 vs 524). Float types keep
/// group lanes (kernel bench: F16 412 with unit lanes, 1084 with group lanes in session 1);
/// Q4_1/Q5_0/Q5_1 were not measured with unit lanes and keep group lanes.
pub const UNIT_TYPES: &[&str] = &["Q4_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"];

/// Whether type id `ty` is a K-quant (Q2_K … Q6_K: 256-weight super-blocks).
pub fn is_kquant(ty: u32) -> bool {
    GgmlType::from_id(ty)
        .is_some_and(|t| ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"].contains(&t.name()))
}

impl Tune {
    /// Whether the decode kernel for type id `ty` uses unit lanes.
    pub fn unit_for(&self, ty: u32) -> bool {
        self.unit_lanes.unwrap_or_else(|| {
            GgmlType::from_id(ty).is_some_and(|t| UNIT_TYPES.contains(&t.name()))
        })
    }

    /// Workgroups of a one-token dispatch of the mat-vec `key` (weights of type id `ty`)
    /// over `rows` rows.
    pub fn decode_groups(&self, key: &KernelKey, ty: u32, rows: u32) -> u32 {
        rows.div_ceil(self.rows_per_wg(key, self.decode_nr(ty)))
    }

    /// Rows per lane group of [`KernelKey::MatVecQ8N`] over weights of type id `ty`
    /// ([`Tune::block_norm_nr`]): by default 1 for Q8_0, 2 for other types. H100, 7B tg128
    /// (session 18), from NR 4 before: NR 2 Q4_K_M p50 2.92 → 2.85 ms (three processes each),
    /// Q2_K 2.55 → 2.51, hybrid 2.83 → 2.78, Q4_0 2.36 → 2.35, Q8_0 3.43 → 3.42; NR 1 Q8_0
    /// 296.1 → 297.5 t/s (p50 3.38 → 3.36) but Q4_K_M 2.95 ms; NR 8 slower everywhere.
    pub fn block_norm_nr_for(&self, ty: u32) -> u32 {
        match self.block_norm_nr {
            0 if ty == GgmlType::Q8_0.id() => 1,
            0 => 2,
            n => n,
        }
    }

    /// Whether the decode mat-vec of type id `ty` uses the integer (q8 activation) kernel.
    pub fn q8_for(&self, ty: u32) -> bool {
        self.q8dot
            && self.act_round
            && GgmlType::from_id(ty).is_some_and(|t| Q8_TYPES.contains(&t.name()))
    }

    /// Whether a decode mat-vec over rows of `units` 32-weight units of type id `ty` uses
    /// the split-K layout.
    pub fn splitk_for(&self, ty: u32, units: usize) -> bool {
        let kquant = is_kquant(ty);
        units >= 256
            && self.unit_for(ty)
            && match self.splitk {
                0 => false,
                1 => kquant,
                _ => true,
            }
    }

    /// The decode (one-token) mat-vec kernel for a matrix of type id `ty` with `units`
    /// 32-weight units per row, NR rows per warp; `nt` > 1 gives the small-batch kernel.
    pub fn matvec_key(&self, ty: u32, nt: u32, nr: u32, units: usize) -> KernelKey {
        if nt == 1 && self.q8_for(ty) {
            let spl = self.q8_lanes(ty, units);
            let nr = if spl == 256 { nr.max(2) } else { nr };
            if self.mv_const && units > 0 {
                return KernelKey::MatVecQ8U {
                    ty,
                    nr,
                    spl,
                    units: units as u32,
                    wg: 256,
                };
            }
            return KernelKey::MatVecQ8 { ty, nr, spl };
        }
        self.matvec_key_f32(ty, nt, nr, units)
    }

    /// The decode graph with its NormQ8 and rounding dispatches: no block-rounding residual
    /// mat-vecs ([`Tune::block_norm`]) and the SwiGLU rounding at its defaults without them
    /// (off, workgroups of 256), as GGUFQ_BLOCK_NORM=0 gives. For comparisons with variants
    /// that replace those dispatches (the kernel check, the tests' shared fixture).
    pub fn normq8_graph(&mut self) {
        self.block_norm = false;
        self.swiglu_q = 0;
        self.swiglu_q_wg = 256;
    }

    /// The shortest chunk of the exact split inside the dispatch of a QKV mat-vec of type id
    /// `ty` ([`Tune::attn_split_joint`]): the attention's own ([`Tune::attn_split`]) unless
    /// the joint one is longer; 0 where the attention is not split.
    pub fn joint_attn_split(&self, ty: u32) -> u32 {
        let joint = self.attn_split_joint.unwrap_or_else(|| {
            GgmlType::from_id(ty)
                .and_then(|t| JOINT_SPLIT_TYPES.iter().find(|(n, _)| *n == t.name()))
                .map_or(0, |&(_, l)| l)
        });
        if self.attn_split == 0 {
            0
        } else {
            self.attn_split.max(joint)
        }
    }

    /// The attention key `at` (an exact-split [`KernelKey::AttnDecodeQ`], whose `ctx` is the
    /// KV cache's length) as the dispatch of a QKV mat-vec of type id `ty` runs it
    /// ([`Tune::joint_attn_split`]), and its chunks per head; other keys unchanged with `nch`.
    pub fn joint_attn_key(&self, at: &KernelKey, nch: u32, ty: u32) -> (KernelKey, u32) {
        let joint = self.joint_attn_split(ty);
        let mut key = at.clone();
        if let KernelKey::AttnDecodeQ {
            ctx,
            nch: n,
            lmin,
            exact: true,
            ..
        } = &mut key
        {
            if *n > 1 && joint > *lmin {
                *lmin = joint;
                *n = ctx.div_ceil(joint).clamp(2, *n);
                let n = *n;
                return (key, n);
            }
        }
        (key, nch)
    }

    /// Whether the decode `ffn_down` mat-vec of type id `ty` rounds its own input.
    pub fn fold_actq_for(&self, ty: u32) -> bool {
        // With [`Tune::block_norm`] the default leaves `ffn_down` to the plain integer
        // kernel, which can round the next norm's input.
        self.fold_actq.unwrap_or_else(|| {
            !self.block_norm
                && GgmlType::from_id(ty).is_some_and(|t| FOLD_ACTQ_TYPES.contains(&t.name()))
        })
    }

    /// The integer decode mat-vec of type id `ty` (rows of `units` 32-weight units) that
    /// rounds its f32 input itself with activation kind `act` (3 Q8_0, 4 Q8_K), after
    /// RMSNorm when `norm` ([`KernelKey::MatVecQ8F`]); None where the type has no integer
    /// kernel (see [`Tune::q8_for`]).
    pub fn matvec_q8f_key(&self, ty: u32, units: usize, act: u32, norm: bool) -> Option<KernelKey> {
        if !self.q8_for(ty) || !matches!(act, 3 | 4) {
            return None;
        }
        let spl = self.q8_lanes(ty, units);
        let nr = match self.fold_nr {
            0 => 8,
            n => n,
        };
        Some(KernelKey::MatVecQ8F {
            ty,
            nr: if spl == 256 { nr.max(2) } else { nr },
            spl,
            act,
            norm,
        })
    }

    /// [`Tune::matvec_key`] without the integer kernel: the kernel that reads f32 inputs.
    pub fn matvec_key_f32(&self, ty: u32, nt: u32, nr: u32, units: usize) -> KernelKey {
        if nt == 1 && self.splitk_for(ty, units) {
            KernelKey::MatVecSplitK { ty, nr }
        } else {
            KernelKey::MatVec { ty, nt, nr }
        }
    }

    /// Lanes that share the units of one row group in the integer decode kernel (32, 64, 128
    /// or 256; the workgroup's 256 lanes hold 256 / lanes row groups of NR rows): by
    /// default the power of two ≥ the row's units (so that each lane takes about one
    /// unit per row), at most 256, except Q8_0 rows of fewer than 256 units: 32 lanes (four
    /// units per lane at 4096-long rows; H100, 7B Q8_0 tg128 p50 3.42 → 3.38 ms with the
    /// SwiGLU kernel at 128, 3.39 with it at 32 too, 3.42–3.43 at 64, session 18).
    /// GGUFQ_Q8_LANES sets it for every matrix, GGUFQ_Q8_LANES_T per type.
    pub fn q8_lanes(&self, ty: u32, units: usize) -> u32 {
        self.q8_lanes_of(ty, units, true)
    }

    /// [`Tune::q8_lanes`]; `narrow` false leaves out the Q8_0 rule of 32 lanes (the SwiGLU
    /// rounding kernel's default lanes, 128 at 4096-long rows, session 17).
    pub fn q8_lanes_of(&self, ty: u32, units: usize, narrow: bool) -> u32 {
        if let Some(l) = type_override(&self.q8_lanes_t, ty) {
            return l;
        }
        if self.q8_lanes != 0 {
            return self.q8_lanes;
        }
        if narrow && ty == GgmlType::Q8_0.id() && units < 256 {
            return 32;
        }
        let steps = if self.pairs(ty, units) {
            units / 2
        } else {
            units
        };
        (steps.next_power_of_two() as u32).clamp(32, 256)
    }

    /// Whether the integer decode kernels of type id `ty` on rows of `units` units take
    /// unit pairs ([`Tune::q8_pair`]: Q4_K, an even unit count).
    pub fn pairs(&self, ty: u32, units: usize) -> bool {
        self.q8_pair && ty == GgmlType::Q4_K.id() && units % 2 == 0
    }

    /// Output rows per workgroup of the kernel `key` with `nr` rows per warp (mat-vec keys;
    /// 64 for the tiled mat-mat).
    pub fn rows_per_wg(&self, key: &KernelKey, nr: u32) -> u32 {
        match key {
            KernelKey::MatVecSplitK { .. } => nr.max(2),
            KernelKey::MatVecQ8U { spl, nr, wg, .. } | KernelKey::MatVecQ8N { spl, nr, wg, .. } => {
                (wg / spl) * nr
            }
            KernelKey::MatVecQ8 { spl, nr, .. }
            | KernelKey::MatVecQ8S { spl, nr, .. }
            | KernelKey::MatVecQ8P { spl, nr, .. }
            | KernelKey::MatVecQ8W { spl, nr, .. }
            | KernelKey::MatVecQ8F { spl, nr, .. }
            | KernelKey::MatVecQ8E { spl, nr, .. } => (256 / spl) * nr,
            KernelKey::MatVecQ8R {
                spl,
                nr,
                passes,
                wg,
                ..
            } => (wg / spl) * nr * passes,
            KernelKey::MatMat { .. } => 64,
            KernelKey::MatVecAttn { mv, .. } => self.rows_per_wg(mv, nr),
            KernelKey::MatVecJoin { parts, .. } => match parts.first() {
                Some(p) => self.rows_per_wg(p, nr),
                None => 8 * nr,
            },
            _ => 8 * nr,
        }
    }

    /// Workgroup tile of the cooperative-matrix mat-mat kernel for type id `ty`: 64 rows ×
    /// 128 tokens, one 32-weight unit of K per stage, for every type. On the H100 (session 4,
    /// 7B pp512, 6 tile shapes) it beat 64 × 64 (session 3's K-quant tile) by 31–47 % and
    /// 128 × 64 (session 3's Q4_0…Q8_0 tile) by 19–29 % on all five mixes; two units per
    /// stage were 35–46 % slower, and 128 × 128 was slower in the kernel bench.
    pub fn coop_tile(&self, _ty: u32) -> CoopTile {
        let or = |v: u32, d: u32| if v != 0 { v } else { d };
        CoopTile {
            bm: or(self.coop_bm, 64),
            bn: or(self.coop_bn, 128),
            ku: or(self.coop_ku, 1),
        }
    }

    /// Rows per warp of the decode kernel for type id `ty`.
    pub fn decode_nr(&self, ty: u32) -> u32 {
        if let Some(n) = type_override(&self.nr_decode_t, ty) {
            return n;
        }
        match self.nr_decode {
            // H100, 7B Q4_K_M tg128 (its V and output matrices): 350.6–350.9 t/s with 4,
            // 352.4 with 2 (session 18).
            0 if ty == GgmlType::Q6_K.id() => 2,
            0 if self.unit_for(ty) => 4,
            0 => NR_DECODE,
            n => n,
        }
    }

    /// Defaults with environment overrides (values out of range are ignored).
    pub fn from_env() -> Tune {
        let get = |k: &str, d: u32, ok: &[u32]| -> u32 {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| ok.contains(v))
                .unwrap_or(d)
        };
        // The block-rounding residual mat-vecs, and with them the SwiGLU mat-vec that rounds
        // its own Q8_0 blocks in workgroups of 1024 (session 14).
        let block_norm = std::env::var("GGUFQ_BLOCK_NORM").as_deref() != Ok("0");
        // On by default; `GpuContext::new` turns it off on adapters that are not discrete
        // GPUs unless GGUFQ_ATTN_WAIT=1 asks for it.
        let attn_wait = std::env::var("GGUFQ_ATTN_WAIT").as_deref() != Ok("0");
        Tune {
            nr_decode: get("GGUFQ_NR_DECODE", 0, &[1, 2, 4, 8]),
            nr_prompt: get("GGUFQ_NR_PROMPT", NR_PROMPT, &[1, 2, 4]),
            nt_prompt: get("GGUFQ_NT_PROMPT", NT_PROMPT, &[4, 8, 16]),
            mm_min: std::env::var("GGUFQ_MM_MIN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(16),
            unit_lanes: match std::env::var("GGUFQ_DECODE_UNIT").as_deref() {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
            udot: std::env::var("GGUFQ_UDOT").as_deref() != Ok("0"),
            act_round: std::env::var("GGUFQ_ACTQ").as_deref() != Ok("0"),
            coop_bm: get("GGUFQ_COOP_BM", 0, &[64, 128]),
            coop_bn: get("GGUFQ_COOP_BN", 0, &[64, 128]),
            coop_ku: get("GGUFQ_COOP_KU", 0, &[1, 2]),
            attn_qt: get("GGUFQ_ATTN_QT", 32, &[16, 32]),
            unchecked: std::env::var("GGUFQ_SHADER_CHECKS").as_deref() != Ok("1"),
            fuse: std::env::var("GGUFQ_FUSE").as_deref() != Ok("0"),
            unroll: get("GGUFQ_UNROLL", 1, &[1, 2, 4]),
            prerecord: std::env::var("GGUFQ_PRERECORD").as_deref() != Ok("0"),
            splitk: get("GGUFQ_SPLITK", 1, &[0, 1, 2]),
            q8dot: std::env::var("GGUFQ_Q8DOT").as_deref() != Ok("0"),
            q8_lanes: get("GGUFQ_Q8_LANES", 0, &[32, 64, 128, 256]),
            normq: std::env::var("GGUFQ_NORMQ").as_deref() != Ok("0"),
            attn_split: get("GGUFQ_ATTN_SPLIT", 32, &[0, 16, 32, 64, 128]),
            attn_exact: std::env::var("GGUFQ_ATTN_EXACT").as_deref() != Ok("0"),
            attn_chunks: get("GGUFQ_ATTN_CHUNKS", ATTN_MAX_CHUNKS, &[16, 32, 64]),
            attn_exact_max: std::env::var("GGUFQ_ATTN_EXACT_MAX")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
            attn_coal: get("GGUFQ_ATTN_COAL", 1, &[0, 1, 2, 4, 8]),
            attn_vrows: get("GGUFQ_ATTN_VROWS", 8, &[4, 8, 16]),
            attn_klanes: get("GGUFQ_ATTN_KLANES", 8, &[4, 8, 16, 32]),
            attn_coal_exact: get("GGUFQ_ATTN_COAL_EXACT", 1, &[0, 1]) == 1,
            attn_lastwg: get("GGUFQ_ATTN_LASTWG", 1, &[0, 1]),
            attn_coop: std::env::var("GGUFQ_ATTN_COOP").as_deref() != Ok("0"),
            actq_div: std::env::var("GGUFQ_ACTQ_DIV").as_deref() != Ok("0"),
            coop_prefetch: std::env::var("GGUFQ_COOP_PF").as_deref() != Ok("0"),
            gpu_embd: std::env::var("GGUFQ_GPU_EMBD").as_deref() != Ok("0"),
            coop_raw: std::env::var("GGUFQ_COOP_RAWK").as_deref() != Ok("0"),
            norm_round: std::env::var("GGUFQ_NORM_ROUND").as_deref() != Ok("0"),
            coop_db: std::env::var("GGUFQ_COOP_DB").as_deref() == Ok("1"),
            fold_actq: match std::env::var("GGUFQ_FOLD_ACTQ").as_deref() {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
            fold_norm: std::env::var("GGUFQ_FOLD_NORM").as_deref() == Ok("1"),
            param_cache: std::env::var("GGUFQ_PARAM_CACHE").as_deref() != Ok("0"),
            fold_nr: get("GGUFQ_FOLD_NR", 0, &[1, 2, 4, 8, 16]),
            lw_actq: std::env::var("GGUFQ_LW_ACTQ").as_deref() == Ok("1"),
            lw_norm: std::env::var("GGUFQ_LW_NORM").as_deref() == Ok("1"),
            lw_atomic: get("GGUFQ_LW_ATOMIC", 1, &[0, 1, 2]),
            actq_sub: get("GGUFQ_ACTQ_SUB", 1, &[0, 1, 2]),
            actq_fastdiv: std::env::var("GGUFQ_ACTQ_FASTDIV").as_deref() != Ok("0"),
            div_skew: 0,
            attn_live: get("GGUFQ_ATTN_LIVE", 1, &[0, 1]),
            attn_skip: std::env::var("GGUFQ_ATTN_SKIP").as_deref() != Ok("0"),
            attn_pre: get("GGUFQ_ATTN_PRE", 0, &[0, 1, 2, 3]),
            kv_f32: std::env::var("GGUFQ_KV_F32").as_deref() == Ok("1"),
            spin_wait: std::env::var("GGUFQ_SPIN_WAIT").as_deref() != Ok("0"),
            greedy_depth: get("GGUFQ_GREEDY_DEPTH", 2, &[2, 3, 4, 6, 8, 16]),
            greedy_group: get("GGUFQ_GREEDY_GROUP", 1, &[1, 2, 4, 8]),
            greedy_cb: std::env::var("GGUFQ_GREEDY_CB").as_deref() == Ok("1"),
            weight_pool: std::env::var("GGUFQ_WEIGHT_POOL")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |mib| mib << 20),
            pool_align: std::env::var("GGUFQ_POOL_ALIGN")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| v.is_power_of_two() && *v <= 1 << 30)
                .unwrap_or(256),
            upload_ring: std::env::var("GGUFQ_UPLOAD_RING").as_deref() == Ok("1"),
            wide: get("GGUFQ_WIDE", 1, &[0, 1, 2]),
            mv_const: std::env::var("GGUFQ_MV_CONST").as_deref() == Ok("1"),
            swiglu_q: get("GGUFQ_SWIGLU_Q", u32::from(block_norm), &[0, 1, 2]),
            swiglu_q_lanes: get("GGUFQ_SWIGLU_Q_LANES", 0, &[32, 64, 128, 256]),
            swiglu_q_nr: get("GGUFQ_SWIGLU_Q_NR", 0, &[1, 2, 4, 8]),
            swiglu_q_wg: get(
                "GGUFQ_SWIGLU_Q_WG",
                if block_norm { 512 } else { 256 },
                &[256, 512, 1024],
            ),
            swiglu_q32k: std::env::var("GGUFQ_SWIGLU_Q32K").as_deref() == Ok("1"),
            qkv_multi: get("GGUFQ_QKV_MULTI", 1, &[0, 1, 2]),
            block_norm,
            block_norm_wg: get("GGUFQ_BLOCK_NORM_WG", 1024, &[256, 512, 1024]),
            block_norm_epi: get("GGUFQ_BLOCK_NORM_EPI", 0, &[0, 1]),
            block_norm_rs: get("GGUFQ_BLOCK_NORM_RS", 0, &[0, 1]),
            attn_wait,
            attn_wait_all: std::env::var("GGUFQ_ATTN_WAIT_ALL").as_deref() == Ok("1"),
            attn_wait_multi: std::env::var("GGUFQ_ATTN_WAIT_MULTI").as_deref() == Ok("1"),
            attn_wait_kquant: std::env::var("GGUFQ_ATTN_WAIT_K").as_deref() == Ok("1"),
            attn_split_joint: std::env::var("GGUFQ_ATTN_SPLIT_JOINT")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| [0, 32, 64, 128, 256].contains(v)),
            mv_join: std::env::var("GGUFQ_MV_JOIN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            q8_pair: std::env::var("GGUFQ_Q8_PAIR").as_deref() == Ok("1"),
            mv_wait: get("GGUFQ_MV_WAIT", 0, &[0, 1, 2, 3, 5, 6, 7]),
            persist: std::env::var("GGUFQ_MV_PERSIST")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v <= 65535)
                .unwrap_or(0),
            prefetch_mb: std::env::var("GGUFQ_PREFETCH_MB")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v <= 1024)
                .unwrap_or(0),
            attn_seg: std::env::var("GGUFQ_ATTN_SEG").as_deref() == Ok("1"),
            skip_roles: std::env::var("GGUFQ_SKIP_ROLES").map_or(0, |v| skip_role_bits(&v)),
            q8_lanes_t: std::env::var("GGUFQ_Q8_LANES_T")
                .map_or(NO_OVERRIDES, |v| type_overrides(&v, &[32, 64, 128, 256])),
            nr_decode_t: std::env::var("GGUFQ_NR_DECODE_T")
                .map_or(NO_OVERRIDES, |v| type_overrides(&v, &[1, 2, 4, 8])),
            argmax_wg: get("GGUFQ_ARGMAX_WG", 1024, &[256, 512, 1024]),
            block_norm_nr: get("GGUFQ_BLOCK_NORM_NR", 0, &[1, 2, 4, 8]),
            block_norm_long: (
                get("GGUFQ_BLOCK_NORM_WG_LONG", 0, &[256, 512, 1024]),
                get("GGUFQ_BLOCK_NORM_NR_LONG", 0, &[1, 2, 4, 8]),
            ),
        }
    }
}

/// Whether the role bits `bits` ([`SKIPPABLE_ROLES`], [`Tune::skip_roles`]) leave out the
/// dispatches of `role`.
pub fn role_skipped(bits: u32, role: &str) -> bool {
    bits != 0
        && SKIPPABLE_ROLES
            .iter()
            .position(|r| *r == role)
            .is_some_and(|i| bits & (1 << i) != 0)
}

/// Roles [`Tune::skip_roles`] can leave out (decode-graph step roles, mat-vec groups by
/// their first matrix's role).
pub const SKIPPABLE_ROLES: &[&str] = &[
    "norm_q8",
    "attention",
    "actq",
    "attn_out_q",
    "qkv",
    "wo",
    "gate_up",
    "down",
    "output",
    "rope_kv",
    "qk_prep",
    "prefetch",
];

/// Entries of a per-type override list ([`Tune::q8_lanes_t`]).
pub const TYPE_OVERRIDES: usize = 4;
/// An empty per-type override list.
pub const NO_OVERRIDES: [(u32, u32); TYPE_OVERRIDES] = [(u32::MAX, 0); TYPE_OVERRIDES];

/// Parse a per-type override list `TYPE=VALUE,...` (values from `ok`); unknown types, values
/// out of range and entries past [`TYPE_OVERRIDES`] are reported on stderr and ignored.
pub fn type_overrides(list: &str, ok: &[u32]) -> [(u32, u32); TYPE_OVERRIDES] {
    let mut out = NO_OVERRIDES;
    let mut n = 0;
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item.split_once('=').and_then(|(t, v)| {
            let ty = GgmlType::from_name(t.trim())?;
            let v: u32 = v.trim().parse().ok().filter(|v| ok.contains(v))?;
            Some((ty.id(), v))
        });
        match parsed {
            Some(e) if n < TYPE_OVERRIDES => {
                out[n] = e;
                n += 1;
            }
            _ => eprintln!("per-type override '{item}' ignored (TYPE=VALUE, VALUE one of {ok:?})"),
        }
    }
    out
}

/// The value `list` gives type id `ty`, if any.
fn type_override(list: &[(u32, u32); TYPE_OVERRIDES], ty: u32) -> Option<u32> {
    list.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

/// [`Tune::skip_roles`] bits of a comma-separated role list; an unknown name is reported on
/// stderr and ignored.
pub fn skip_role_bits(list: &str) -> u32 {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match SKIPPABLE_ROLES.iter().position(|r| *r == name) {
            Some(i) => bits |= 1 << i,
            None => eprintln!(
                "GGUFQ_SKIP_ROLES: unknown role '{name}' ignored (known: {})",
                SKIPPABLE_ROLES.join(", ")
            ),
        }
    }
    bits
}

/// The epilogue of [`KernelKey::MatVecQ8E`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatEpi {
    /// SwiGLU output (mode 2: interleaved gate/up rows, mode 3: up rows with the gate
    /// stored before) rounded as `actq.wgsl` rounds it (`kind` 3: Q8_0 blocks of 32, 4:
    /// Q8_K blocks of 256) into binding 6: rounded f32 values at the value index, packed
    /// int8 quants and per-32 scales from word `qbase`. `wpb` workgroups complete a block
    /// (counter 1 + block).
    Act {
        kind: u32,
        mode: u32,
        wpb: u32,
        qbase: u32,
    },
    /// RMSNorm of the residual row Y[0 .. 4·k4] (weights at binding 5, eps in `P.pad1`) and
    /// its rounding into the packed region from word `qbase`, as [`KernelKey::NormQ8`]
    /// computes it: Q8_0 blocks to binding 6 when `kinds & 1`, Q8_K blocks to binding 7
    /// when `kinds & 2`. `nwg` workgroups in the dispatch (counter 0).
    Norm {
        k4: u32,
        kinds: u32,
        nwg: u32,
        qbase: u32,
    },
}

/// Kernel identity in the pipeline cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelKey {
    /// Mat-vec / mat-mat over one weight type: NT tokens per workgroup, NR rows per warp
    /// (8·NR rows per workgroup).
    MatVec { ty: u32, nt: u32, nr: u32 },
    /// Tiled 64×64 mat-mat over one weight type.
    MatMat { ty: u32 },
    /// RMSNorm.
    RmsNorm,
    /// RoPE + KV store.
    Rope,
    /// Tiled prompt attention (`shaders/attention.wgsl`) for head size `hd`, `qt` tokens per
    /// workgroup and blocks of `kb` keys ([`attention_tile`]).
    Attention { hd: u32, qt: u32, kb: u32 },
    /// Prompt flash attention on cooperative matrices (`shaders/attention_coop.wgsl`) for head
    /// size `hd`: [`ATTN_COOP_QT`] tokens per workgroup, blocks of [`ATTN_COOP_KB`] keys.
    AttentionCoop { hd: u32 },
    /// Decode mat-vec (one token) whose prologue applies RMSNorm to its `k4`·4-long input
    /// (held in workgroup memory), then the activation rounding `act` (a
    /// [`super::actq::kind_of`] code, 0 none), NR rows per warp.
    MatVecNorm {
        ty: u32,
        nr: u32,
        k4: u32,
        act: u32,
        q8: bool,
    },
    /// Decode mat-vec (one token) of a [`Q8_TYPES`] matrix reading the activation as int8
    /// quants and per-32 scales (the packed region of the rounding's output), optionally in
    /// the split-K layout.
    MatVecQ8 { ty: u32, nr: u32, spl: u32 },
    /// [`KernelKey::MatVecQ8`] for rows of exactly `units` 32-weight units, the count
    /// compiled in ([`Tune::mv_const`]): each lane's ⌈units / spl⌉ steps are unrolled, all
    /// their loads (input and weights of every row) issued before the first product is
    /// added, then added in the runtime loop's order (same sums bit for bit).
    MatVecQ8U {
        ty: u32,
        nr: u32,
        spl: u32,
        units: u32,
        /// Threads per workgroup (64, 128, 256, 512; at least `spl`): `wg / spl` row
        /// groups of `nr` rows.
        wg: u32,
    },
    /// [`KernelKey::MatVecQ8`] whose f32 input is rounded in the kernel: each lane quantizes
    /// the unit it dots (activation kind `act`: 3 Q8_0, 4 Q8_K), after RMSNorm of the whole
    /// row with the weights at binding 4 when `norm` (eps in `P.pad1`).
    MatVecQ8F {
        ty: u32,
        nr: u32,
        spl: u32,
        act: u32,
        norm: bool,
    },
    /// [`KernelKey::MatVecQ8`] (one token, single weight chunk) with a last-workgroup
    /// epilogue `epi` ([`MatEpi`], `shaders/matvec_epi.wgsl`): every workgroup stores its
    /// rows, `storageBarrier()`, counts itself on an atomic counter (binding 3; parameters at 4); the one
    /// that completes a counter runs the epilogue and resets the counter. `atomic`: which
    /// accesses of the output go through atomics ([`Tune::lw_atomic`]: 0 none, 1 all, 2
    /// the stores' own reads, with the output also bound at 8 as plain f32).
    MatVecQ8E {
        ty: u32,
        nr: u32,
        spl: u32,
        epi: MatEpi,
        atomic: u32,
    },
    /// [`KernelKey::MatVecQ8`] (one token, single weight chunk) of the SwiGLU mat-vec (mode
    /// 2: interleaved gate/up rows, 3: up rows with the gate stored `P.pad0` values further)
    /// whose workgroups of `wg` invocations (256 or 512) own whole activation blocks
    /// ([`Tune::swiglu_q`]): `passes` row groups of (`wg` / `spl`) · `nr` rows each, their SwiGLU outputs stored as the plain
    /// kernel stores them and kept in workgroup memory, then rounded with the operations of
    /// [`KernelKey::NormQ8`]'s rounding (`kind` 3: Q8_0 blocks of 32, 4: Q8_K blocks of 256)
    /// into the packed region (quants from word `qbase`, then the per-32 scales) of binding
    /// 4, where `ffn_down` reads them.
    /// Residual decode mat-vec (one token, one weight chunk, mode 1) whose workgroups of
    /// `wg` invocations own 32 consecutive rows (`spl` lanes × `nr` rows per lane group,
    /// `wg` / `spl` · `nr` = 32) and round the next RMSNorm's input ([`Tune::block_norm`]):
    /// after Y += W·x each workgroup scales its new residual values by the norm weights
    /// (binding 3), rounds them in 32-value blocks (activation `kind` 3 Q8_0 or 4 Q8_K
    /// arithmetic, an f32 scale per block) into the packed region of binding 5 (quants
    /// from word `qbase`, then the per-32 scales, then each block's Σx² of the residual).
    MatVecQ8N {
        ty: u32,
        nr: u32,
        spl: u32,
        wg: u32,
        kind: u32,
        qbase: u32,
    },
    /// [`KernelKey::MatVecQ8`] whose input was rounded by [`KernelKey::MatVecQ8N`] without
    /// the RMSNorm factor ([`Tune::block_norm`]): the kernel also sums the per-block Σx²
    /// after the packed region (from word `ld_x + ld_x / 4 + ld_x / 32`, `P.units` of them)
    /// and multiplies every output by 1 / sqrt(Σx² / (32 · units) + eps) (eps in `P.pad1`)
    /// before the store, SwiGLU modes included.
    MatVecQ8S { ty: u32, nr: u32, spl: u32 },
    MatVecQ8R {
        ty: u32,
        nr: u32,
        spl: u32,
        passes: u32,
        mode: u32,
        kind: u32,
        qbase: u32,
        wg: u32,
        /// Its input was rounded by [`KernelKey::MatVecQ8N`]: the gate and up sums are
        /// multiplied by 1/rms first, as [`KernelKey::MatVecQ8S`] does.
        scaled: bool,
    },
    /// Decode RMSNorm of the residual row (`k4`·4 values) followed by the activation
    /// rounding `act` (3 Q8_0, 4 Q8_K), written as packed int8 quants and per-32 scales
    /// for the [`KernelKey::MatVecQ8`] kernels after it (one workgroup).
    NormQ8 { k4: u32, act: u32 },
    /// [`KernelKey::MatVecQ8`] (one token) with its input built in the kernel: every
    /// workgroup first computes the whole rounded activation of its `k4`·4-long f32 input
    /// into workgroup memory (`norm`: RMSNorm with the weights at binding 4 first, as
    /// [`KernelKey::NormQ8`] computes it; otherwise the rounding of the SwiGLU output as
    /// `actq.wgsl`), then walks row groups with a stride of the dispatch's workgroup count
    /// (a few per SM, [`Tune::persist`]), so the NormQ8 / rounding dispatch before it goes.
    MatVecQ8P {
        ty: u32,
        nr: u32,
        spl: u32,
        k4: u32,
        act: u32,
        norm: bool,
    },
    /// [`KernelKey::MatVecQ8`] (one token, one weight chunk) whose first workgroups build its
    /// rounded input in the packed region (binding 1, written here) before the others read
    /// it ([`Tune::mv_wait`]): with `norm` workgroup 0 runs [`KernelKey::NormQ8`]'s
    /// operations on the residual row (binding 3, norm weights at 5), otherwise workgroups
    /// `0 .. ⌈k4 / 1024⌉` round 4096 values each of the f32 input (binding 3) as
    /// [`KernelKey::MatVecQ8P`]'s prologue does. Each producer counts itself on its step's
    /// counter (binding 6); every workgroup waits until the count is complete (one lane
    /// spinning on an atomic load, then a device-scope barrier); workgroup 0 also zeroes the
    /// previous such step's counter (binding 7). `touch`: the weights of each lane's first
    /// unit are loaded before the wait. Same quants and sums as the NormQ8 / rounding dispatch
    /// followed by [`KernelKey::MatVecQ8`], so the same outputs bit for bit.
    MatVecQ8W {
        ty: u32,
        nr: u32,
        spl: u32,
        k4: u32,
        act: u32,
        norm: bool,
        touch: bool,
    },
    /// L2 prefetch ([`Tune::prefetch_mb`]): reads every word of its binding 0 (a range of
    /// a weight buffer), [`PREFETCH_WG_BYTES`] per workgroup, and writes nothing unless the
    /// words' XOR equals the binding's length (to binding 1, a scratch word of its own).
    Prefetch,
    /// Decode mat-vec (one token) in the split-K layout: the workgroup's 256 lanes share
    /// the K range of NR (≥ 2) rows.
    MatVecSplitK { ty: u32, nr: u32 },
    /// Decode attention with RoPE and the KV store fused in (`ctx` score entries, head size
    /// `hd`); with `nch` > 1 each of `nch` workgroups per head takes a chunk of at least
    /// `lmin` positions and writes its partial result (max, sum, accumulator) instead.
    /// `exact`: every workgroup scores all positions ([`Tune::attn_exact`]).
    AttnDecode {
        ctx: u32,
        hd: u32,
        nch: u32,
        lmin: u32,
        exact: bool,
    },
    /// [`KernelKey::AttnDecode`] (split, `nch` > 1) whose last workgroup per group of 256 /
    /// `hd` heads combines the group's partial results and rounds them for `wo` exactly as
    /// [`KernelKey::AttnCombineQ`] does ([`Tune::attn_lastwg`]). Bindings 7 (the rounding's
    /// output) and 8 (one u32 counter per token and head group, zero between dispatches);
    /// `reset` false only in the tests' fault injection.
    AttnDecodeQ {
        ctx: u32,
        hd: u32,
        nch: u32,
        lmin: u32,
        exact: bool,
        reset: bool,
    },
    /// Decode attention by output segment (`shaders/attn_decode_seg.wgsl`,
    /// [`Tune::attn_seg`]): one workgroup per 256 attention output values (256 / `hd`
    /// heads) and token scores, weighs and rounds them for `wo` itself, with
    /// [`KernelKey::AttnDecodeQ`]'s bindings (3 and 8 unused). Scores of up to `ctx`
    /// positions per head in workgroup memory.
    AttnDecodeS { ctx: u32, hd: u32 },
    /// The rounding of `shaders/actq.wgsl` whose input is the combination of the `nch`
    /// partial results of the split decode attention ([`Tune::attn_split`]).
    /// `exact`: the partial results are already normalised and just add up.
    AttnCombineQ { nch: u32, exact: bool },
    /// Batch RMSNorm (`shaders/rmsnorm.wgsl`'s arithmetic, one workgroup per token, rows of
    /// `k4`·4 values) that also writes the activation rounding `act` of its output, as
    /// `actq.wgsl` would compute it in the next dispatch ([`Tune::norm_round`]).
    NormRound { k4: u32, act: u32 },
    /// Embedding look-up of prompt tokens (`shaders/embed.wgsl`): rows of the token-embedding
    /// matrix of type id `ty`, dequantized on the GPU ([`Tune::gpu_embd`]).
    Embed { ty: u32 },
    /// The greedy next token of a one-token pass (`shaders/argmax.wgsl`), for
    /// [`GpuModel::decode_greedy`](super::GpuModel::decode_greedy).
    Argmax,
    /// Activation rounding before quantized matrices (`shaders/actq.wgsl`, [`super::actq`]).
    ActQ,
    /// A step only some architectures record (qwen2, qwen3, gemma3: [`super::arch::ArchOp`]).
    Arch(super::arch::ArchOp),
    /// Up to [`MULTI_MAX`] integer decode mat-vecs ([`KernelKey::MatVecQ8`] of any types
    /// whose inputs are the same rounding) in one dispatch: `parts[..n]` are the matrices (or
    /// weight chunks), each with its own weight binding and parameter block, its range of
    /// workgroups running its own kernel ([`matvec_q8_multi_source`]); `order` 0: ranges one
    /// after the other, 1: interleaved ([`multi_workgroups`]).
    MatVecQ8Multi {
        parts: [MultiPart; MULTI_MAX],
        n: u32,
        order: u32,
    },
    /// Consecutive decode mat-vecs in one dispatch ([`Tune::mv_join`]): `parts` (the residual
    /// [`KernelKey::MatVecQ8N`] and the SwiGLU [`KernelKey::MatVecQ8R`] kernels, all of one
    /// workgroup size) with `groups[k]` workgroups each, in grid order. Part k > 0 reads
    /// part k − 1's packed output: its workgroups wait until every workgroup of part k − 1
    /// has counted itself, then copy up to three ranges of it into workgroup memory with
    /// atomic loads (`xs[k]`: vec4 start and count of its quants, scales and per-block
    /// sums; count 0 for none) and read their input there
    /// ([`matvec_join_source`]). `ay[k]`: part k's output rows are accessed through atomics
    /// (a residual row another part also reads and writes).
    MatVecJoin {
        parts: Vec<KernelKey>,
        groups: Vec<u32>,
        xs: Vec<[u32; 6]>,
        ay: Vec<bool>,
    },
    /// The decode QKV mat-vec `mv` of one matrix ([`KernelKey::MatVecQ8`] or
    /// [`KernelKey::MatVecQ8S`]) and the decode attention `at`
    /// ([`KernelKey::AttnDecodeQ`]) in one dispatch ([`Tune::attn_wait`],
    /// [`matvec_attn_source`]): workgroups `0 .. mvg` run the mat-vec's row groups in KV-head
    /// order (per KV head: `rq` groups of its query heads' rows, `rk` of its K rows, `rv` of
    /// its V rows) and count themselves on the KV head's wait counter; the `ag` after them
    /// run the attention, each head waiting for its KV head's count before it reads the new
    /// token's Q/K/V. Same operations as the two dispatches, so the same outputs bit for bit.
    /// `mv` may also be a [`KernelKey::MatVecQ8Multi`] of two parts in ranges (Q+K, then V
    /// of a type of its own, `rv` row groups per KV head).
    MatVecAttn {
        mv: Box<KernelKey>,
        at: Box<KernelKey>,
        mvg: u32,
        ag: u32,
        rq: u32,
        rk: u32,
        rv: u32,
    },
}

/// WGSL of the mat-vec kernel of type id `ty` (NT tokens per workgroup, NR rows per warp);
/// with `k4 = Some(k4)` a one-token kernel whose prologue RMS-normalises its `4·k4`-long
/// input with the weights at binding 4 (eps in `P.pad1`) into workgroup memory. `q8`: the
/// fused integer kernel (one token, unit lanes, the type's `idot`), whose prologue rounds
/// the normalised input into int8 quants and per-32 scales (needs `k4`; ignored without).
fn matvec_source(
    ctx: &GpuContext,
    ty: u32,
    nt: u32,
    nr: u32,
    k4: Option<u32>,
    splitk: bool,
    q8: bool,
) -> Result<String> {
    let gt =
        GgmlType::from_id(ty).ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
    let xsrc = if k4.is_some() { "xs" } else { "X" };
    let xoff = if k4.is_some() { "" } else { "P.x_off + " };
    // The integer path here is the fused one (prologue rounding, GGUFQ_NORMQ=0); the
    // kernel that reads packed quants from X is `matvec_q8_source`.
    let q8 = q8 && nt == 1 && k4.is_some();
    let splitk = splitk && (q8 || ctx.tune.unit_for(ty)) && nt <= 2;
    // Split-K workgroups hold NR rows: at least 2, so that SwiGLU's (gate, up) row pairs
    // stay together.
    let nr = if splitk { nr.max(2) } else { nr };
    let (norm_decl, norm_pro) = match k4 {
        None => (String::new(), String::new()),
        Some(k4) => (
            format!(
                "@group(0) @binding(4) var<storage, read> NW: array<vec4<f32>>;\n\
                 const K4: u32 = {k4}u;\n\
                 var<workgroup> xs: array<vec4<f32>, K4>;\n\
                 var<workgroup> nred: array<f32, 256>;\n\
                 $ACT_FNS\n"
            ),
            if ctx.subgroup32 {
                NORM_PROLOGUE.replace(NORM_TREE, NORM_SUBGROUP)
            } else {
                NORM_PROLOGUE.to_string()
            },
        ),
    };
    let lay = layout(gt)?;
    let deq = deq_source(gt, "W", "", "P.d_off")?;
    let (nr, nt) = (nr as usize, nt as usize);
    let mut body = String::new();
    for r in 0..nr {
        for t in 0..nt {
            body.push_str(&format!("    var acc_{r}_{t} = 0.0;\n"));
        }
    }
    for t in 0..nt {
        body.push_str(&format!(
            "    let xt_{t} = {xoff}min(t0 + {t}u, P.n_tok - 1u) * P.ld_x;\n"
        ));
    }
    if q8 && !deq.contains("fn idot") {
        return Err(Error::msg(format!(
            "no integer decode kernel for {}",
            gt.name()
        )));
    }
    // Unit lanes hold 8 x vectors per token: only for decode-sized NT.
    if q8 {
        // One 32-weight unit per lane per step: its int8 quants (two vec4<u32>) and scale
        // are loaded once and reused for NR rows.
        let outer = std::mem::take(&mut body);
        body.push_str(
            "        let xa = xqa[u];\n        let xb = xqb[u];\n        let dx = xd[u];\n",
        );
        body.push_str("        let one = 0x01010101u;\n        let sx0 = (dot4I8Packed(xa.x, one) + dot4I8Packed(xa.y, one)) + (dot4I8Packed(xa.z, one) + dot4I8Packed(xa.w, one));\n        let sx1 = (dot4I8Packed(xb.x, one) + dot4I8Packed(xb.y, one)) + (dot4I8Packed(xb.z, one) + dot4I8Packed(xb.w, one));\n");
        for r in 0..nr {
            body.push_str(&format!("        let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n        acc_{r}_0 += dx * idot(gu_{r} / UPB, gu_{r} % UPB, xa, xb, sx0, sx1);\n"));
        }
        let unit = std::mem::replace(&mut body, outer);
        let (first, stride) = if splitk { ("lid", 256) } else { ("lane", 32) };
        body.push_str(&format!(
            "    for (var u = {first}; u < P.units; u += {stride}u) {{\n"
        ));
        body.push_str(&unit);
        body.push_str("    }\n");
    } else if ctx.tune.unit_for(ty) && nt <= 2 {
        // Lane = one 32-weight unit per step: its 8 x vectors are loaded once
        // (8 loads in flight) and reused for NR rows; the unit's scale is looked
        // up by 8 inlined deq4 calls on the same block, which the compiler merges.
        let outer = std::mem::take(&mut body);
        for t in 0..nt {
            for j in 0..8 {
                body.push_str(&format!(
                    "        let xv_{t}_{j} = {xsrc}[xt_{t} + u * 8u + {j}u];\n"
                ));
            }
        }
        let has_udot = ctx.tune.udot && deq.contains("fn udot");
        for r in 0..nr {
            body.push_str(&format!("        let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n        let b_{r} = gu_{r} / UPB;\n        let s_{r} = gu_{r} % UPB;\n"));
            if has_udot {
                // The type's unit dot: integer unpacking, one scale multiply.
                for t in 0..nt {
                    let xs: Vec<String> = (0..8).map(|j| format!("xv_{t}_{j}")).collect();
                    body.push_str(&format!(
                        "        acc_{r}_{t} += udot(b_{r}, s_{r}, {});\n",
                        xs.join(", ")
                    ));
                }
                continue;
            }
            for j in 0..8 {
                body.push_str(&format!(
                    "        let w_{r}_{j} = deq4(b_{r}, s_{r}, {j}u);\n"
                ));
            }
            for t in 0..nt {
                let terms: Vec<String> = (0..8)
                    .map(|j| format!("dot(w_{r}_{j}, xv_{t}_{j})"))
                    .collect();
                body.push_str(&format!(
                    "        acc_{r}_{t} += ({}) + ({});\n",
                    terms[..4].join(" + "),
                    terms[4..].join(" + ")
                ));
            }
        }
        // `unit` is one unit's work for the unit index `u`. With UNROLL > 1 the loop takes
        // UNROLL units (u0, u0 + 32, ...) per step in one block, so the loads of all of them
        // can be in flight together; the accumulation order is the same as without.
        // Split-K: all 256 lanes of the workgroup walk the units of the same NR rows.
        let unit = std::mem::replace(&mut body, outer);
        let un = ctx.tune.unroll.max(1);
        let (first, stride) = if splitk { ("lid", 256) } else { ("lane", 32) };
        if un > 1 {
            body.push_str(&format!(
                "    var u0 = {first};\n    for (; u0 + {}u < P.units; u0 += {}u) {{\n",
                stride * (un - 1),
                stride * un
            ));
            for k in 0..un {
                body.push_str(&format!("    {{\n        let u = u0 + {}u;\n", stride * k));
                body.push_str(&unit);
                body.push_str("    }\n");
            }
            body.push_str(&format!(
                "    }}\n    for (var u = u0; u < P.units; u += {stride}u) {{\n"
            ));
        } else {
            body.push_str(&format!(
                "    for (var u = {first}; u < P.units; u += {stride}u) {{\n"
            ));
        }
        body.push_str(&unit);
        body.push_str("    }\n");
    } else {
        body.push_str("    let groups = P.units * 8u;\n    for (var g = lane; g < groups; g += 32u) {\n        let u = g >> 3u;\n        let j = g & 7u;\n");
        for t in 0..nt {
            body.push_str(&format!("        let xv_{t} = {xsrc}[xt_{t} + g];\n"));
        }
        for r in 0..nr {
            body.push_str(&format!("        let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n        let w_{r} = deq4(gu_{r} / UPB, gu_{r} % UPB, j);\n"));
            for t in 0..nt {
                body.push_str(&format!("        acc_{r}_{t} += dot(w_{r}, xv_{t});\n"));
            }
        }
        body.push_str("    }\n");
    }
    let decl = if splitk && ctx.subgroup32 {
        "var<workgroup> part: array<f32, 8u * RPW * NT>;".to_string()
    } else if ctx.subgroup32 {
        String::new()
    } else {
        "var<workgroup> red: array<f32, 256>;".to_string()
    };
    for r in 0..nr {
        for t in 0..nt {
            let k = r * nt + t;
            if splitk && ctx.subgroup32 {
                // One sum per warp, then the 8 warp sums of each accumulator.
                body.push_str(&format!("    let s_{k} = subgroupAdd(acc_{r}_{t});\n    if (lane == 0u) {{ part[warp * RPW * NT + {k}u] = s_{k}; }}\n"));
            } else if splitk {
                body.push_str(&format!("    red[lid] = acc_{r}_{t};\n    workgroupBarrier();\n    for (var s = 128u; s > 0u; s >>= 1u) {{\n        if (lid < s) {{ red[lid] += red[lid + s]; }}\n        workgroupBarrier();\n    }}\n    if (lid == 0u) {{ res[{k}u] = red[0]; }}\n    workgroupBarrier();\n"));
            } else if ctx.subgroup32 {
                body.push_str(&format!("    let s_{k} = subgroupAdd(acc_{r}_{t});\n    if (lane == 0u) {{ res[warp * NR * NT + {k}u] = s_{k}; }}\n"));
            } else {
                body.push_str(&format!("    red[lid] = acc_{r}_{t};\n    workgroupBarrier();\n    for (var s = 16u; s > 0u; s >>= 1u) {{\n        if (lane < s) {{ red[lid] += red[lid + s]; }}\n        workgroupBarrier();\n    }}\n    if (lane == 0u) {{ res[warp * NR * NT + {k}u] = red[lid]; }}\n    workgroupBarrier();\n"));
            }
        }
    }
    if splitk && ctx.subgroup32 {
        body.push_str("    workgroupBarrier();\n    if (lid < RPW * NT) {\n        res[lid] = ((part[lid] + part[RPW * NT + lid]) + (part[2u * RPW * NT + lid] + part[3u * RPW * NT + lid])) + ((part[4u * RPW * NT + lid] + part[5u * RPW * NT + lid]) + (part[6u * RPW * NT + lid] + part[7u * RPW * NT + lid]));\n    }\n");
    }
    let rpw = if splitk { nr } else { 8 * nr };
    Ok(matvec_wgsl(&MatVecParts {
        rpw,
        warp_rows: if splitk { "0u" } else { "warp * NR" },
        nt,
        nr,
        upb: lay.units_per_block(),
        red_decl: &decl,
        xty: "vec4<f32>",
        body: &body,
        deq: &deq,
        norm_decl: &norm_decl,
        norm_pro: &norm_pro,
    }))
}

/// The pieces that fill shaders/matvec.wgsl's placeholders (`$RPW`, `$WARP_ROWS`, ...).
struct MatVecParts<'a> {
    rpw: usize,
    warp_rows: &'a str,
    nt: usize,
    nr: usize,
    upb: usize,
    red_decl: &'a str,
    xty: &'a str,
    body: &'a str,
    deq: &'a str,
    norm_decl: &'a str,
    norm_pro: &'a str,
}

/// shaders/matvec.wgsl with its placeholders filled from `p`.
fn matvec_wgsl(p: &MatVecParts) -> String {
    MATVEC_WGSL
        .replace("$RPW", &p.rpw.to_string())
        .replace("$WARP_ROWS", p.warp_rows)
        .replace("$NT", &p.nt.to_string())
        .replace("$NR", &p.nr.to_string())
        .replace("$UPB", &p.upb.to_string())
        .replace("$RED_DECL", p.red_decl)
        .replace("$XTY", p.xty)
        .replace("$BODY", p.body)
        .replace("$DEQ", p.deq)
        .replace("$NORM_DECL", p.norm_decl)
        .replace("$NORM_PRO", p.norm_pro)
}

/// Layout and dequantization functions of `gt` for the integer decode mat-vecs; an error if
/// the type has no `idot` (integer dot product) function.
fn int_deq(gt: GgmlType) -> Result<(GpuLayout, String)> {
    let lay = layout(gt)?;
    let deq = deq_source(gt, "W", "", "P.d_off")?;
    if !deq.contains("fn idot") {
        return Err(Error::msg(format!(
            "no integer decode kernel for {}",
            gt.name()
        )));
    }
    Ok((lay, deq))
}

/// WGSL of the integer decode mat-vec ([`KernelKey::MatVecQ8`]): `spl` lanes (a power of
/// two from 32 to 256) share the units of each group of `nr` rows, each lane one unit per
/// step; the activation is the packed region of X (int8 quants from word `P.ld_x`, then the
/// per-32 scales), read from global memory (it stays in cache).
fn matvec_q8_source(ctx: &GpuContext, ty: u32, nr: u32, spl: u32) -> Result<String> {
    let (lay, deq, body, decl) = q8_parts(ctx, ty, nr, spl)?;
    let rpw = (256 / spl) as usize * nr as usize;
    Ok(matvec_wgsl(&MatVecParts {
        rpw,
        warp_rows: "(lid / SPL) * NR",
        nt: 1,
        nr: nr as usize,
        upb: lay.units_per_block(),
        red_decl: &decl,
        xty: "vec4<u32>",
        body: &body,
        deq: &deq,
        norm_decl: "",
        norm_pro: "",
    }))
}

/// WGSL of [`KernelKey::MatVecQ8U`]: [`matvec_q8_source`]'s kernel for rows of exactly
/// `units` units. Each lane's steps (units `gl`, `gl + spl`, …) are written out: first
/// every step's input quants and scale and every row's `idot` (a step past the row's end
/// reads the last unit instead), then the products added in the loop's order, the steps
/// past the end skipped, so every sum is the runtime loop's.
fn matvec_q8u_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    units: u32,
    wg: u32,
) -> Result<String> {
    let gt =
        GgmlType::from_id(ty).ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
    if !matches!(spl, 32 | 64 | 128 | 256)
        || !matches!(nr, 1 | 2 | 4 | 8)
        || units == 0
        || !matches!(wg, 64 | 128 | 256 | 512 | 1024)
        || spl > wg
    {
        return Err(Error::msg(format!(
            "integer mat-vec: {spl} lanes per row group, {nr} rows per group, {units} units, {wg} threads"
        )));
    }
    let (lay, deq) = int_deq(gt)?;
    let steps = units.div_ceil(spl);
    let mut body = String::new();
    for r in 0..nr {
        body.push_str(&format!("    var acc_{r}_0 = 0.0;\n"));
    }
    body.push_str("    let gl = lid % SPL;\n");
    body.push_str("    let xq0 = P.ld_x / 4u + P.x_off / 4u;\n    let xs0 = P.ld_x + P.ld_x / 4u + P.x_off / 8u;\n    let one = 0x01010101u;\n");
    for k in 0..steps {
        // Only the last step can run past the row (units < steps · spl).
        let ragged = (k + 1) * spl > units;
        if ragged {
            body.push_str(&format!(
                "    let u_{k} = min(gl + {}u, {}u);\n",
                k * spl,
                units - 1
            ));
        } else {
            body.push_str(&format!("    let u_{k} = gl + {}u;\n", k * spl));
        }
        body.push_str(&format!("    let xa_{k} = X[xq0 + 2u * u_{k}];\n    let xb_{k} = X[xq0 + 2u * u_{k} + 1u];\n    let dx_{k} = bitcast<f32>(X[(xs0 + u_{k}) >> 2u][(xs0 + u_{k}) & 3u]);\n"));
        body.push_str(&format!("    let sx0_{k} = (dot4I8Packed(xa_{k}.x, one) + dot4I8Packed(xa_{k}.y, one)) + (dot4I8Packed(xa_{k}.z, one) + dot4I8Packed(xa_{k}.w, one));\n    let sx1_{k} = (dot4I8Packed(xb_{k}.x, one) + dot4I8Packed(xb_{k}.y, one)) + (dot4I8Packed(xb_{k}.z, one) + dot4I8Packed(xb_{k}.w, one));\n"));
        for r in 0..nr {
            body.push_str(&format!("    let gu_{k}_{r} = min(rbase + {r}u, P.rows - 1u) * UNITS + u_{k};\n    let d_{k}_{r} = idot(gu_{k}_{r} / UPB, gu_{k}_{r} % UPB, xa_{k}, xb_{k}, sx0_{k}, sx1_{k});\n"));
        }
    }
    for k in 0..steps {
        let ragged = (k + 1) * spl > units;
        let ind = if ragged { "        " } else { "    " };
        if ragged {
            body.push_str(&format!("    if (gl + {}u < UNITS) {{\n", k * spl));
        }
        for r in 0..nr {
            body.push_str(&format!("{ind}acc_{r}_0 += dx_{k} * d_{k}_{r};\n"));
        }
        if ragged {
            body.push_str("    }\n");
        }
    }
    let decl = q8u_reduce(ctx, nr as usize, spl, wg, &mut body);
    let rpw = (wg / spl) as usize * nr as usize;
    let src = matvec_wgsl(&MatVecParts {
        rpw,
        warp_rows: "(lid / SPL) * NR",
        nt: 1,
        nr: nr as usize,
        upb: lay.units_per_block(),
        red_decl: &format!("const SPL: u32 = {spl}u;\nconst UNITS: u32 = {units}u;\n{decl}"),
        xty: "vec4<u32>",
        body: &body,
        deq: &deq,
        norm_decl: "",
        norm_pro: "",
    });
    // shaders/matvec.wgsl is written for 256 threads: its size and the store loop's stride.
    let (a, b) = ("@workgroup_size(256)", "idx += 256u");
    if !src.contains(a) || !src.contains(b) {
        return Err(Error::msg(
            "internal: matvec.wgsl without its workgroup size",
        ));
    }
    Ok(src
        .replace(a, &format!("@workgroup_size({wg})"))
        .replace(b, &format!("idx += {wg}u")))
}

/// The end of the integer decode kernels, for workgroups of `wg` threads: the NR
/// accumulators of each lane summed over the `spl` lanes of its row group into `res`
/// (appended to `body`; one `subgroupAdd` per warp, then the warps of a row group in order;
/// or the workgroup-memory tree over the row group's lanes); returns the declarations.
fn q8u_reduce(ctx: &GpuContext, nr: usize, spl: u32, wg: u32, body: &mut String) -> String {
    let wpg = spl / 32;
    if ctx.subgroup32 {
        for r in 0..nr {
            body.push_str(&format!("    let s_{r} = subgroupAdd(acc_{r}_0);\n    if (lane == 0u) {{ part[warp * NR + {r}u] = s_{r}; }}\n"));
        }
        body.push_str("    workgroupBarrier();\n    if (lid < RPW) {\n        let g = lid / NR;\n        let r = lid % NR;\n        var t = 0.0;\n");
        body.push_str(&format!(
            "        for (var w = 0u; w < {wpg}u; w++) {{ t += part[(g * {wpg}u + w) * NR + r]; }}\n        res[lid] = t;\n    }}\n"
        ));
        format!("var<workgroup> part: array<f32, {}u * NR>;", wg / 32)
    } else {
        for r in 0..nr {
            body.push_str(&format!("    red[lid] = acc_{r}_0;\n    workgroupBarrier();\n    for (var s = SPL / 2u; s > 0u; s >>= 1u) {{\n        if (gl < s) {{ red[lid] += red[lid + s]; }}\n        workgroupBarrier();\n    }}\n    if (gl == 0u) {{ res[(lid / SPL) * NR + {r}u] = red[lid]; }}\n    workgroupBarrier();\n"));
        }
        format!("var<workgroup> red: array<f32, {wg}>;")
    }
}

/// The integer decode kernel's pieces (shared by [`matvec_q8_source`] and
/// [`matvec_q8e_source`]): layout, dequantization functions, the loop and reduction into
/// `res`, and the declarations it needs (`SPL` included).
fn q8_parts(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
) -> Result<(GpuLayout, String, String, String)> {
    q8_parts_wg(ctx, ty, nr, spl, 256)
}

/// [`q8_parts`] for workgroups of `wg` invocations ([`q8u_reduce`]).
fn q8_parts_wg(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    wg: u32,
) -> Result<(GpuLayout, String, String, String)> {
    let gt =
        GgmlType::from_id(ty).ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
    if !matches!(spl, 32 | 64 | 128 | 256) || !matches!(nr, 1 | 2 | 4 | 8) {
        return Err(Error::msg(format!(
            "integer mat-vec: {spl} lanes per row group, {nr} rows per group"
        )));
    }
    let (lay, deq) = int_deq(gt)?;
    let nr = nr as usize;
    let mut body = String::new();
    for r in 0..nr {
        body.push_str(&format!("    var acc_{r}_0 = 0.0;\n"));
    }
    body.push_str("    let gl = lid % SPL;\n");
    // Packed region: quants from word ld_x (vec4 index ld_x / 4), then the scales.
    body.push_str("    let xq0 = P.ld_x / 4u + P.x_off / 4u;\n    let xs0 = P.ld_x + P.ld_x / 4u + P.x_off / 8u;\n");
    if ctx.tune.q8_pair && gt == GgmlType::Q4_K && deq.contains("fn idot2") {
        // Unit pairs (sub-blocks 2k, 2k + 1 of a block share their quant bytes); rows of
        // Q4_K have a multiple of 8 units.
        body.push_str(
            "    for (var u2 = gl; u2 < P.units / 2u; u2 += SPL) {\n        let u = 2u * u2;\n",
        );
        body.push_str("        let xa = X[xq0 + 2u * u];\n        let xb = X[xq0 + 2u * u + 1u];\n        let xc = X[xq0 + 2u * u + 2u];\n        let xd = X[xq0 + 2u * u + 3u];\n");
        body.push_str("        let dx = bitcast<f32>(X[(xs0 + u) >> 2u][(xs0 + u) & 3u]);\n        let dy = bitcast<f32>(X[(xs0 + u + 1u) >> 2u][(xs0 + u + 1u) & 3u]);\n");
        body.push_str("        let one = 0x01010101u;\n");
        for (n, v) in [("sx0", "xa"), ("sx1", "xb"), ("sy0", "xc"), ("sy1", "xd")] {
            body.push_str(&format!("        let {n} = (dot4I8Packed({v}.x, one) + dot4I8Packed({v}.y, one)) + (dot4I8Packed({v}.z, one) + dot4I8Packed({v}.w, one));\n"));
        }
        for r in 0..nr {
            body.push_str(&format!("        let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n        let pr_{r} = idot2(gu_{r} / UPB, gu_{r} % UPB, xa, xb, sx0, sx1, xc, xd, sy0, sy1);\n        acc_{r}_0 += dx * pr_{r}.x;\n        acc_{r}_0 += dy * pr_{r}.y;\n"));
        }
        body.push_str("    }\n");
        let decl = q8u_reduce(ctx, nr, spl, wg, &mut body);
        return Ok((lay, deq, body, format!("const SPL: u32 = {spl}u;\n{decl}")));
    }
    body.push_str("    for (var u = gl; u < P.units; u += SPL) {\n");
    body.push_str("        let xa = X[xq0 + 2u * u];\n        let xb = X[xq0 + 2u * u + 1u];\n        let dx = bitcast<f32>(X[(xs0 + u) >> 2u][(xs0 + u) & 3u]);\n");
    body.push_str("        let one = 0x01010101u;\n        let sx0 = (dot4I8Packed(xa.x, one) + dot4I8Packed(xa.y, one)) + (dot4I8Packed(xa.z, one) + dot4I8Packed(xa.w, one));\n        let sx1 = (dot4I8Packed(xb.x, one) + dot4I8Packed(xb.y, one)) + (dot4I8Packed(xb.z, one) + dot4I8Packed(xb.w, one));\n");
    for r in 0..nr {
        body.push_str(&format!("        let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n        acc_{r}_0 += dx * idot(gu_{r} / UPB, gu_{r} % UPB, xa, xb, sx0, sx1);\n"));
    }
    body.push_str("    }\n");
    let decl = q8u_reduce(ctx, nr, spl, wg, &mut body);
    Ok((lay, deq, body, format!("const SPL: u32 = {spl}u;\n{decl}")))
}

/// WGSL of [`KernelKey::MatVecQ8E`]: the integer decode kernel of [`matvec_q8_source`] in
/// `shaders/matvec_epi.wgsl`, with the epilogue `epi` run by the last workgroup of each
/// counter. The operations are those of the dispatches it replaces, so the results are the
/// same bit for bit: [`MatEpi::Act`] rounds a block as `actq.wgsl` does (block maximum,
/// `div_rn` scales, the f16 scale of Q8_0, `min(…, 127)` for Q8_K, quants and scales
/// packed at the same words), [`MatEpi::Norm`] runs [`normq8_regs_source`]'s body on the
/// residual row (same Σx² reduction, same per-thread values).
fn matvec_q8e_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    epi: MatEpi,
    atomic: u32,
) -> Result<String> {
    let (lay, deq, body, decl) = q8_parts(ctx, ty, nr, spl)?;
    let rpw = (256 / spl) * nr;
    let (bind, edecl, code, cidx, need) = match epi {
        MatEpi::Act {
            kind,
            mode,
            wpb,
            qbase,
        } => {
            let bs = match kind {
                3 => 32u32,
                4 => 256,
                _ => return Err(Error::msg(format!("epilogue rounding of kind {kind}"))),
            };
            let opw = match mode {
                2 => rpw / 2,
                3 => rpw,
                _ => return Err(Error::msg(format!("rounding epilogue after mode {mode}"))),
            };
            if opw == 0 || bs % opw != 0 || wpb != bs / opw || qbase % 64 != 0 {
                return Err(Error::msg(format!(
                    "rounding epilogue: {opw} outputs per workgroup, blocks of {bs}, {wpb} workgroups per block, packed base {qbase}"
                )));
            }
            let scale = if kind == 3 {
                // Q8_0 / Q8_1: d = amax / 127 stored as f16, q = round(x · 127 / amax).
                "let mul = select(0.0, div_rn(127.0, amax), amax != 0.0);
    let dq = round_f16(div_rn(amax, 127.0));
    let q = round(v * mul);"
            } else {
                // Q8_K: iscale = 127 / amax, d = 1 / iscale; an all-zero block stays zero.
                "var mul = 0.0;
    var dq = 0.0;
    var q = 0.0;
    if (amax != 0.0) {
        mul = div_rn(127.0, amax);
        dq = div_rn(1.0, mul);
        q = min(round(mul * v), 127.0);
    }"
            };
            (
                "@group(0) @binding(6) var<storage, read_write> R: array<u32>;".to_string(),
                format!(
                    "const BS: u32 = {bs}u;\nconst QB: u32 = {qbase}u;\nvar<workgroup> ered: array<f32, 256>;\nvar<workgroup> eq: array<i32, 256>;\n{}",
                    actq_functions()
                ),
                format!(
                    "    // Round block b of the SwiGLU output (values b·BS ..) as actq.wgsl does.
    let b = c - 1u;
    let i = b * BS + lid;
    let live = lid < BS;
    var v = 0.0;
    if (live) {{
        v = eld(P.y_off + i);
    }}
    ered[lid] = abs(v);
    workgroupBarrier();
    for (var s = BS / 2u; s > 0u; s >>= 1u) {{
        if (lid < s) {{
            ered[lid] = max(ered[lid], ered[lid + s]);
        }}
        workgroupBarrier();
    }}
    let amax = ered[0];
    {scale}
    if (live) {{
        R[i] = bitcast<u32>(q * dq);
    }}
    eq[lid] = i32(q);
    workgroupBarrier();
    if (lid < BS / 4u) {{
        let j = 4u * lid;
        R[QB + (b * BS) / 4u + lid] = pack4xI8(vec4<i32>(eq[j], eq[j + 1u], eq[j + 2u], eq[j + 3u]));
    }}
    if (lid < BS / 32u) {{
        R[QB + QB / 4u + (b * BS) / 32u + lid] = bitcast<u32>(dq);
    }}
"
                ),
                format!("1u + (wg.x * {opw}u) / BS"),
                wpb,
            )
        }
        MatEpi::Norm {
            k4,
            kinds,
            nwg,
            qbase,
        } => {
            if k4 % 64 != 0 || k4 > 1024 || !(1..=3).contains(&kinds) || nwg == 0 {
                return Err(Error::msg(format!(
                    "norm epilogue: {} values, kinds {kinds}, {nwg} workgroups",
                    4 * k4
                )));
            }
            let reduce = if ctx.subgroup32 {
                NORM_SUBGROUP
            } else {
                NORM_TREE
            };
            let mut bind =
                "@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;\n".to_string();
            let mut code = format!(
                "    // NormQ8 of the residual row Y[0 .. 4·K4] (normq8_regs_source's body).
{norm}",
                norm = normq8_norm(reduce, "ld4($I)")
            );
            for (bit, act, out) in [(1u32, 3u32, "Q0"), (2, 4, "Q1")] {
                if kinds & bit == 0 {
                    continue;
                }
                bind.push_str(&format!(
                    "@group(0) @binding({}) var<storage, read_write> {out}: array<u32>;\n",
                    if act == 3 { 6 } else { 7 }
                ));
                code.push_str(&normq8_quantize(
                    act,
                    ctx.tune.actq_fastdiv,
                    &format!(
                        "let o = QB + 4u * lid;
            {out}[o] = p0;
            {out}[o + 1u] = p1;
            {out}[o + 2u] = p2;
            {out}[o + 3u] = p3;"
                    ),
                    &format!("{out}[QB + QB / 4u + lid / 2u] = bitcast<u32>(sd);"),
                ));
            }
            (
                bind,
                format!(
                    "const K4: u32 = {k4}u;\nconst QB: u32 = {qbase}u;\nvar<workgroup> nred: array<f32, 256>;\nvar<workgroup> mx: array<f32, 256>;\n{}\nfn amax4(v: vec4<f32>) -> f32 {{\n    let a = abs(v);\n    return max(max(a.x, a.y), max(a.z, a.w));\n}}\nfn ld4(j: u32) -> vec4<f32> {{\n    return vec4<f32>(eld(4u * j), eld(4u * j + 1u), eld(4u * j + 2u), eld(4u * j + 3u));\n}}\n",
                    actq_functions()
                ),
                code,
                "0u".to_string(),
                nwg,
            )
        }
    };
    let ald = "bitcast<f32>(atomicLoad(&Y[i]))";
    let (yty, yld, yst, eld) = match atomic {
        0 => ("f32", "Y[i]", "Y[i] = v", "Y[i]"),
        1 => (
            "atomic<u32>",
            ald,
            "atomicStore(&Y[i], bitcast<u32>(v))",
            ald,
        ),
        2 => ("atomic<u32>", ald, "YF[i] = v", "YF[i]"),
        _ => return Err(Error::msg(format!("epilogue access mode {atomic}"))),
    };
    let bind = if atomic == 2 {
        bind + "@group(0) @binding(8) var<storage, read_write> YF: array<f32>;\n"
    } else {
        bind
    };
    Ok(MATVEC_EPI_WGSL
        .replace("$YTY", yty)
        .replace("$YLD", yld)
        .replace("$YST", yst)
        .replace("$ELD", eld)
        .replace("$EPI_BIND", &bind)
        .replace("$EPI_DECL", &edecl)
        .replace("$RED_DECL", &decl)
        .replace("$NR", &nr.to_string())
        .replace("$RPW", &rpw.to_string())
        .replace("$UPB", &lay.units_per_block().to_string())
        .replace("$CIDX", &cidx)
        .replace("$NEED", &format!("{need}u"))
        .replace("$BODY", &body)
        .replace("$EPI", &code)
        .replace("$DEQ", &deq))
}

/// WGSL of [`KernelKey::MatVecQ8R`]: the integer decode kernel's loop and reduction
/// ([`q8_parts`]) run for `passes` consecutive row groups of the workgroup; after each, the
/// SwiGLU outputs of the group are computed as shaders/matvec.wgsl's stores compute them
/// (same expressions), stored to Y and kept in workgroup memory. Then the workgroup's
/// outputs (whole blocks) are rounded by [`normq8_quantize`] (16 values per thread, the
/// block maximum over its threads' maxima, the `div_rn` scales of `actq.wgsl`) into binding
/// 4's packed region at the words the rounding dispatch writes: the same quants and scales.
#[allow(clippy::too_many_arguments)]
fn matvec_q8r_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    passes: u32,
    mode: u32,
    kind: u32,
    qbase: u32,
    wg: u32,
    scaled: bool,
) -> Result<String> {
    if !matches!(wg, 256 | 512 | 1024) || spl > wg {
        return Err(Error::msg(format!(
            "SwiGLU rounding: {wg} invocations per workgroup, {spl} lanes"
        )));
    }
    let (lay, deq, body, decl) = q8_parts_wg(ctx, ty, nr, spl, wg)?;
    // With `scaled`, 1/rms of the residual row from the per-block Σx² after the packed
    // input (warp 0 before its weight loads, as MatVecQ8S's default form), visible after the
    // first pass's barrier.
    let (rs_pro, rs) = if scaled {
        let (loads, fin) = rms_from_partials(ctx, "rsv");
        (format!("{loads}{fin}"), " * rsv")
    } else {
        (String::new(), "")
    };
    let rpw = (wg / spl) * nr;
    let opi = match mode {
        2 => rpw / 2,
        3 => rpw,
        _ => return Err(Error::msg(format!("SwiGLU rounding after mode {mode}"))),
    };
    let bs = match kind {
        3 => 32u32,
        4 => 256,
        _ => return Err(Error::msg(format!("SwiGLU rounding of kind {kind}"))),
    };
    let nv = opi * passes;
    if opi == 0 || passes == 0 || nv % bs != 0 || nv > 4096 || qbase % 64 != 0 {
        return Err(Error::msg(format!(
            "SwiGLU rounding: {opi} outputs per pass, {passes} passes, blocks of {bs}, packed base {qbase}"
        )));
    }
    let silu = if mode == 2 {
        format!(
            "let v = res[2u * lid]{rs};
            let up = res[2u * lid + 1u]{rs};
            h = v / (1.0 + exp(-v)) * up;"
        )
    } else {
        format!(
            "let v = res[lid]{rs};
            let g = Y[o + P.pad0];
            h = g / (1.0 + exp(-g)) * v;"
        )
    };
    let quantize = normq8_quantize(
        kind,
        ctx.tune.actq_fastdiv,
        "let o = QB + (wg.x * NV) / 4u + 4u * lid;
            R[o] = p0;
            R[o + 1u] = p1;
            R[o + 2u] = p2;
            R[o + 3u] = p3;",
        "R[QB + QB / 4u + (wg.x * NV) / 32u + lid / 2u] = bitcast<u32>(sd);",
    );
    Ok(format!(
        "struct Params {{ rows: u32, units: u32, d_off: u32, x_off: u32, ld_x: u32, y_off: u32, ld_y: u32, n_tok: u32, mode: u32, row0: u32, pad0: u32, pad1: u32 }}
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;
@group(0) @binding(4) var<storage, read_write> R: array<u32>;

const NR: u32 = {nr}u;
const RPW: u32 = {rpw}u;
const UPB: u32 = {upb}u;
const PASSES: u32 = {passes}u;
const OPI: u32 = {opi}u;
const NV: u32 = {nv}u;
const QB: u32 = {qbase}u;
var<workgroup> res: array<f32, RPW>;
var<workgroup> hv: array<vec4<f32>, NV / 4u>;
var<workgroup> mx: array<f32, {wg}>;
var<workgroup> rsv: f32;
{decl}
{fns}
fn amax4(v: vec4<f32>) -> f32 {{
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}}

{deq}

@compute @workgroup_size({wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let warp = lid / 32u;
    let lane = lid % 32u;
{rs_pro}    for (var pass_i = 0u; pass_i < PASSES; pass_i++) {{
        let grp = wg.x * PASSES + pass_i;
        let rbase = grp * RPW + (lid / SPL) * NR;
{body}
        workgroupBarrier();
        if (lid < OPI) {{
            // Output grp · OPI + lid (one chunk: row0 = 0), as matvec.wgsl stores it.
            let o = P.y_off + grp * OPI + lid;
            var h = 0.0;
            {silu}
            Y[o] = h;
            let k = pass_i * OPI + lid;
            hv[k / 4u][k % 4u] = h;
        }}
    }}
    workgroupBarrier();
    // The workgroup's NV outputs, 16 per thread, rounded as NormQ8 rounds its row.
    let live = lid * 16u < NV;
    let i0 = min(lid, NV / 16u - 1u) * 4u;
    let v0 = hv[i0];
    let v1 = hv[i0 + 1u];
    let v2 = hv[i0 + 2u];
    let v3 = hv[i0 + 3u];
    mx[lid] = select(0.0, max(max(amax4(v0), amax4(v1)), max(amax4(v2), amax4(v3))), live);
    workgroupBarrier();
{quantize}}}
",
        upb = lay.units_per_block(),
        fns = actq_functions(),
    ))
}

/// The scale of a 32-value block rounded by [`KernelKey::MatVecQ8N`] (`kind` 3: Q8_0's
/// arithmetic, 4: Q8_K's) from its maximum `amax`: WGSL defining `sx` (the multiplier) and
/// `sd` (the stored f32 scale), and the quant expression over `v`. Unlike NormQ8's Q8_0 scale
/// the stored scale is not rounded to f16: the values are not normalised, so a small
/// residual would fall into f16's subnormal range.
fn block_rounding(kind: u32, fast: bool) -> Result<(String, &'static str)> {
    if !matches!(kind, 3 | 4) {
        return Err(Error::msg(format!("block rounding of kind {kind}")));
    }
    let (_, scale, q) = normq8_rounding(kind, fast);
    Ok((scale.replace("round_f16(", "("), q))
}

/// WGSL of [`KernelKey::MatVecQ8N`]: the integer decode loop and reduction
/// ([`q8_parts_wg`]) for 32 rows per workgroup, the residual add of mode 1, then the
/// workgroup's 32 new residual values times the norm weights rounded as one block, its
/// Σx² stored after the scales.
fn matvec_q8n_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    wg: u32,
    kind: u32,
    qbase: u32,
) -> Result<String> {
    if !matches!(wg, 256 | 512 | 1024) || spl > wg || (wg / spl.max(1)) * nr != 32 {
        return Err(Error::msg(format!(
            "block-rounding mat-vec: {spl} lanes × {nr} rows in {wg} invocations (needs 32 rows)"
        )));
    }
    if qbase % 64 != 0 || qbase == 0 {
        return Err(Error::msg(format!(
            "block-rounding mat-vec: packed base {qbase} (a non-zero multiple of 64)"
        )));
    }
    let (scale, q) = block_rounding(kind, ctx.tune.actq_fastdiv)?;
    let (lay, deq, body, decl) = q8_parts_wg(ctx, ty, nr, spl, wg)?;
    // Mode 1 (one chunk, row0 = 0): the new residual value, then x · w for the next norm.
    let store = "        let row = wg.x * RPW + lid;
        let o = P.y_off + row;
        let xv = Y[o] + res[lid];
        Y[o] = xv;
        let z = xv * NW[row];";
    let epi = if ctx.subgroup32 && ctx.tune.block_norm_epi == 1 {
        // Warp 0 holds the block, one value per lane: maximum and Σx² by subgroup
        // operations, each lane's quant, four lanes' quants packed by the first of them.
        let q1 = q.replace("vec4<f32>(127.0)", "127.0");
        format!(
            "    if (lid < RPW) {{
{store}
        let amax = subgroupMax(abs(z));
        let ss = subgroupAdd(xv * xv);
        {scale}
        let v = z;
        let qi = i32({q1});
        let q1 = subgroupShuffle(qi, min(lane + 1u, 31u));
        let q2 = subgroupShuffle(qi, min(lane + 2u, 31u));
        let q3 = subgroupShuffle(qi, min(lane + 3u, 31u));
        if (lane % 4u == 0u) {{
            R[QB + wg.x * 8u + lane / 4u] = pack4xI8(vec4<i32>(qi, q1, q2, q3));
        }}
        if (lane == 0u) {{
            R[QB + QB / 4u + wg.x] = bitcast<u32>(sd);
            R[QB + QB / 4u + QB / 32u + wg.x] = bitcast<u32>(ss);
        }}
    }}
"
        )
    } else {
        format!(
            "    if (lid < RPW) {{
{store}
        zb[lid] = z;
        sq[lid] = xv * xv;
    }}
    workgroupBarrier();
    // One 32-value block: 8 threads of 4 values, each finding the block's maximum.
    if (lid < 8u) {{
        var amax = 0.0;
        var ss = 0.0;
        for (var j = 0u; j < 32u; j++) {{
            amax = max(amax, abs(zb[j]));
            ss += sq[j];
        }}
        {scale}
        let v = vec4<f32>(zb[4u * lid], zb[4u * lid + 1u], zb[4u * lid + 2u], zb[4u * lid + 3u]);
        R[QB + wg.x * 8u + lid] = pack4xI8(vec4<i32>({q}));
        if (lid == 0u) {{
            R[QB + QB / 4u + wg.x] = bitcast<u32>(sd);
            R[QB + QB / 4u + QB / 32u + wg.x] = bitcast<u32>(ss);
        }}
    }}
"
        )
    };
    Ok(format!(
        "struct Params {{ rows: u32, units: u32, d_off: u32, x_off: u32, ld_x: u32, y_off: u32, ld_y: u32, n_tok: u32, mode: u32, row0: u32, pad0: u32, pad1: u32 }}
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> NW: array<f32>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read_write> R: array<u32>;

const NR: u32 = {nr}u;
const RPW: u32 = 32u;
const UPB: u32 = {upb}u;
const QB: u32 = {qbase}u;
var<workgroup> res: array<f32, RPW>;
var<workgroup> zb: array<f32, RPW>;
var<workgroup> sq: array<f32, RPW>;
{decl}
{fns}
{deq}

@compute @workgroup_size({wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let warp = lid / 32u;
    let lane = lid % 32u;
    let rbase = wg.x * RPW + (lid / SPL) * NR;
{body}
    workgroupBarrier();
{epi}}}
",
        upb = lay.units_per_block(),
        fns = actq_functions(),
    ))
}

/// The start of [`rms_from_partials`]'s loads: the first partial sum's word `pb` and the
/// accumulator `rs_acc`.
const RMS_PARTIALS_HEAD: &str =
    "    // Σx² of the residual row: one partial sum per 32-value block after the scales.
    let pb = P.ld_x + P.ld_x / 4u + P.ld_x / 32u;
    var rs_acc = 0.0;
";

/// 1/rms of the residual row whose per-block Σx² [`KernelKey::MatVecQ8N`] stored after the
/// packed input (from word `ld_x + ld_x / 4 + ld_x / 32`, `P.units` of them; eps in
/// `P.pad1`), as two WGSL pieces: `loads` (declares `pb` and `rs_acc`; warp 0 sums the
/// partial sums lane by lane, or thread 0 all of them without 32-wide subgroups) and
/// `finish` (after `loads`, anywhere later: stores the factor into `target`).
fn rms_from_partials(ctx: &GpuContext, target: &str) -> (String, String) {
    let add = "rs_acc += bitcast<f32>(X[(pb + i) >> 2u][(pb + i) & 3u]);";
    if ctx.subgroup32 {
        (
            format!("{RMS_PARTIALS_HEAD}    if (warp == 0u) {{\n        for (var i = lane; i < P.units; i += 32u) {{\n            {add}\n        }}\n    }}\n"),
            format!("    if (warp == 0u) {{\n        let t = subgroupAdd(rs_acc);\n        if (lane == 0u) {{\n            {target} = {};\n        }}\n    }}\n", inv_rms("t")),
        )
    } else {
        (
            format!("{RMS_PARTIALS_HEAD}    if (lid == 0u) {{\n        for (var i = 0u; i < P.units; i++) {{\n            {add}\n        }}\n    }}\n"),
            format!("    if (lid == 0u) {{\n        {target} = {};\n    }}\n", inv_rms("rs_acc")),
        )
    }
}

/// WGSL of 1 / sqrt(`sum` / n + eps) for a row of `P.units` 32-value blocks (eps in `P.pad1`),
/// the factor [`KernelKey::NormQ8`] computes as `inv`.
fn inv_rms(sum: &str) -> String {
    format!("1.0 / sqrt({sum} / f32(P.units * 32u) + bitcast<f32>(P.pad1))")
}

/// WGSL of [`KernelKey::MatVecQ8S`]: [`matvec_q8_source`]'s kernel whose outputs are
/// multiplied by the 1/rms of the row its input was rounded from (the per-block Σx² that
/// [`KernelKey::MatVecQ8N`] stored after the packed region, loaded before the loop).
fn matvec_q8s_source(ctx: &GpuContext, ty: u32, nr: u32, spl: u32) -> Result<String> {
    let src = matvec_q8_source(ctx, ty, nr, spl)?;
    let (pro, fin, head) = if ctx.subgroup32 && ctx.tune.block_norm_rs == 1 {
        // Every thread loads (at most) one partial sum before the loop, so the loads wait
        // beside the weights'; each warp's sum goes to `rsw` before the store loop's
        // barrier, and every thread adds the 8 warp sums in order after it.
        (
            format!("{RMS_PARTIALS_HEAD}    for (var i = lid; i < P.units; i += 256u) {{\n        rs_acc += bitcast<f32>(X[(pb + i) >> 2u][(pb + i) & 3u]);\n    }}\n"),
            "    let rs_w = subgroupAdd(rs_acc);\n    if (lane == 0u) {\n        rsw[warp] = rs_w;\n    }\n".to_string(),
            format!(
                "    let rsv = {};\n",
                inv_rms("(((rsw[0] + rsw[1]) + (rsw[2] + rsw[3])) + ((rsw[4] + rsw[5]) + (rsw[6] + rsw[7])))")
            ),
        )
    } else if ctx.subgroup32 {
        // Warp 0 loads and sums every partial sum (a loop of its own before the weights').
        let (loads, fin) = rms_from_partials(ctx, "rsw[0]");
        (loads, fin, "    let rsv = rsw[0];\n".to_string())
    } else {
        let (loads, fin) = rms_from_partials(ctx, "rsv");
        (loads, fin, String::new())
    };
    let shared = if ctx.subgroup32 {
        "var<workgroup> rsw: array<f32, 8>;"
    } else {
        "var<workgroup> rsv: f32;"
    };
    // matvec.wgsl's anchors: the start of the body, the barrier before the store loop, the
    // stored values.
    let anchors = [
        "    let t0 = wg.y * NT;\n",
        "\n    workgroupBarrier();\n    for (var idx = lid;",
        "let v = res[idx];",
        "let up = res[idx + NT];",
        "var<workgroup> res: array<f32, RPW * NT>;",
    ];
    if anchors.iter().any(|a| src.matches(a).count() != 1) {
        return Err(Error::msg(
            "internal: matvec.wgsl without the anchors of the scaled integer kernel",
        ));
    }
    Ok(src
        .replace(anchors[0], &format!("{}{pro}", anchors[0]))
        .replace(
            anchors[1],
            &format!("\n{fin}    workgroupBarrier();\n{head}    for (var idx = lid;"),
        )
        .replace(anchors[2], "let v = res[idx] * rsv;")
        .replace(anchors[3], "let up = res[idx + NT] * rsv;")
        .replace(anchors[4], &format!("{}\n{shared}", anchors[4])))
}

/// Types whose repacked blocks start on 16-byte boundaries and whose integer dot products
/// read 4-word groups at 4-word-aligned offsets, so [`wide_weights`] applies.
pub const WIDE_TYPES: &[&str] = &["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"];

/// The [`WIDE_TYPES`] whose integer decode kernels use 128-bit loads by default
/// ([`Tune::wide`] = 1): the ones that were faster on the H100.
pub const WIDE_DEFAULT_TYPES: &[&str] = &["Q4_0", "Q8_0"];

/// Whether the integer decode kernel of type id `ty` loads its weights 128 bits at a time.
pub fn wide_for(tune: &Tune, ty: u32) -> bool {
    let types = match tune.wide {
        0 => return false,
        1 => WIDE_DEFAULT_TYPES,
        _ => WIDE_TYPES,
    };
    GgmlType::from_id(ty).is_some_and(|t| types.contains(&t.name()))
}

/// `src`, an integer decode kernel over type id `ty`, with 128-bit weight loads where
/// [`Tune::wide`] asks for them ([`wide_weights`]).
fn wide_if(ctx: &GpuContext, ty: u32, src: String) -> Result<String> {
    if wide_for(&ctx.tune, ty) {
        wide_weights(&src)
    } else {
        Ok(src)
    }
}

/// The WGSL of an integer decode kernel with the weights bound as `array<vec4<u32>>`: every
/// `vec4<u32>(W[e], W[e + 1u], W[e + 2u], W[e + 3u])` becomes the single load
/// `W[(e) >> 2u]` (offsets are multiples of 4 for [`WIDE_TYPES`]), every other `W[i]` the
/// word `wl(i)` of the vector holding it. Same words, so the same results.
pub fn wide_weights(src: &str) -> Result<String> {
    const DECL: &str = "var<storage, read> W: array<u32>;";
    if !src.contains(DECL) {
        return Err(Error::msg("internal: kernel without a u32 weight binding"));
    }
    let src = src.replace(DECL, "$WIDE_DECL");
    // The expression inside the brackets that open just before `s`, and the rest after
    // the closing one.
    fn bracketed(s: &str, open: char, close: char) -> Option<(&str, &str)> {
        let mut depth = 1usize;
        for (i, c) in s.char_indices() {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[..i], &s[i + 1..]));
                }
            }
        }
        None
    }
    // "base + Nu" → (base, N); anything else → (expr, 0).
    fn split_off(e: &str) -> (&str, u32) {
        if let Some((b, n)) = e.rsplit_once(" + ") {
            if let Some(d) = n.strip_suffix('u') {
                if let Ok(v) = d.parse::<u32>() {
                    return (b, v);
                }
            }
        }
        (e, 0)
    }
    // Four consecutive words: the vector index expression.
    let group = |inner: &str| -> Option<String> {
        let items: Vec<&str> = inner.split(", ").collect();
        if items.len() != 4 {
            return None;
        }
        let mut parts = Vec::new();
        for it in &items {
            let e = it.strip_prefix("W[")?.strip_suffix(']')?;
            if e.contains('[') {
                return None;
            }
            parts.push(split_off(e));
        }
        let (b, n0) = parts[0];
        // The base is a multiple of 4 for WIDE_TYPES; the constant part must be too.
        let consecutive = n0 % 4 == 0
            && parts
                .iter()
                .enumerate()
                .all(|(k, (bk, nk))| *bk == b && *nk == n0 + k as u32);
        consecutive.then(|| {
            if n0 == 0 {
                format!("WV[({b}) >> 2u]")
            } else {
                format!("WV[({b} + {n0}u) >> 2u]")
            }
        })
    };
    let mut out = String::with_capacity(src.len());
    let mut rest = src.as_str();
    const V4: &str = "vec4<u32>(W[";
    while let Some(p) = rest.find(V4) {
        let after = &rest[p + V4.len() - 2..];
        let Some((inner, tail)) = bracketed(after, '(', ')') else {
            return Err(Error::msg("internal: unbalanced weight load"));
        };
        match group(inner) {
            Some(g) => {
                out.push_str(&rest[..p]);
                out.push_str(&g);
                rest = tail;
            }
            None => {
                out.push_str(&rest[..p + V4.len() - 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    // Scalar reads: `W[i]` (not part of a longer name) → `wl(i)`.
    let mut res = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(p) = rest.find("W[") {
        let prev = rest[..p].chars().next_back();
        let ident = prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            res.push_str(&rest[..p + 2]);
            rest = &rest[p + 2..];
            continue;
        }
        let Some((inner, tail)) = bracketed(&rest[p + 2..], '[', ']') else {
            return Err(Error::msg("internal: unbalanced weight index"));
        };
        res.push_str(&rest[..p]);
        res.push_str(&format!("wl({inner})"));
        rest = tail;
    }
    res.push_str(rest);
    Ok(res.replace("WV[", "W[").replace(
        "$WIDE_DECL",
        "var<storage, read> W: array<vec4<u32>>;\nfn wl(i: u32) -> u32 {\n    return W[i >> 2u][i & 3u];\n}",
    ))
}

/// Whether [`KernelKey::MatVecQ8P`] takes an input of `k4`·4 values with activation kind
/// `act` (3 Q8_0, 4 Q8_K): `norm` inputs as the register NormQ8 ([`normq8_regs_source`]:
/// at most 4096 values, a multiple of 128), others whole blocks of at most 16384 values.
pub fn persist_fits(k4: u32, act: u32, norm: bool) -> bool {
    let blocks = if act == 4 { k4 % 64 == 0 } else { k4 % 8 == 0 };
    matches!(act, 3 | 4)
        && k4 > 0
        && if norm {
            k4 <= 1024 && k4 % 32 == 0
        } else {
            blocks && k4 <= 4096
        }
}

/// WGSL of [`KernelKey::MatVecQ8P`]: the prologue builds the packed int8 quants and per-32
/// scales of the whole input in workgroup memory with the operations of
/// [`normq8_regs_source`] (16 values per thread, block maxima by [`normq8_quantize`], the same
/// `div_rn` scales), then the loop of [`matvec_q8_source`] (same lanes, rows, reduction and
/// store modes) runs over row groups `wg.x, wg.x + nwg, …`, reading the activation from
/// workgroup memory. Same quants, same sums, so the same outputs bit for bit as the NormQ8 /
/// rounding dispatch followed by [`KernelKey::MatVecQ8`].
fn matvec_q8p_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    k4: u32,
    act: u32,
    norm: bool,
) -> Result<String> {
    let (lay, deq, body, decl) = own_input_parts(ctx, "persistent", ty, nr, spl, k4, act, norm)?;
    let reads = [
        ("X[xq0 + 2u * u + 1u]", "XQ[2u * u + 1u]"),
        ("X[xq0 + 2u * u]", "XQ[2u * u]"),
        ("bitcast<f32>(X[(xs0 + u) >> 2u][(xs0 + u) & 3u])", "XS[u]"),
    ];
    // The unit-pair body's second unit (Tune::q8_pair).
    let pair_reads = [
        ("X[xq0 + 2u * u + 2u]", "XQ[2u * u + 2u]"),
        ("X[xq0 + 2u * u + 3u]", "XQ[2u * u + 3u]"),
        (
            "bitcast<f32>(X[(xs0 + u + 1u) >> 2u][(xs0 + u + 1u) & 3u])",
            "XS[u + 1u]",
        ),
    ];
    let mut body = body;
    for (from, to) in reads {
        if !body.contains(from) {
            return Err(Error::msg(
                "internal: integer mat-vec body without its input reads",
            ));
        }
        body = body.replace(from, to);
    }
    for (from, to) in pair_reads {
        body = body.replace(from, to);
    }
    let body = body
        .replace("    let xq0 = P.ld_x / 4u + P.x_off / 4u;\n", "")
        .replace("    let xs0 = P.ld_x + P.ld_x / 4u + P.x_off / 8u;\n", "");
    let round = |qb: &str| {
        input_rounding(
            ctx,
            act,
            norm,
            "X[P.x_off + $I]",
            qb,
            "XQ[qb + lid] = vec4<u32>(p0, p1, p2, p3);",
            "XS[qb / 2u + lid / 2u] = sd;",
        )
    };
    let pro = if norm {
        round("0u")
    } else {
        format!(
            "    for (var qb0 = 0u; qb0 < K4 / 4u; qb0 += 256u) {{\n{}    workgroupBarrier();\n    }}\n",
            round("qb0")
        )
    };
    let nw_decl = if norm {
        "@group(0) @binding(4) var<storage, read> NW: array<vec4<f32>>;"
    } else {
        ""
    };
    Ok(format!(
        "{PARAMS_STRUCT}
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;
{nw_decl}
{common}
var<workgroup> XQ: array<vec4<u32>, {nq}u>;
var<workgroup> XS: array<f32, {ns}u>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    let warp = lid / 32u;
    let lane = lid % 32u;
{pro}    workgroupBarrier();
    let ngroups = (P.rows + RPW - 1u) / RPW;
    for (var grp = wg.x; grp < ngroups; grp += nwg.x) {{
    let rbase = grp * RPW + (lid / SPL) * NR;
{body}
    workgroupBarrier();
{store}    workgroupBarrier();
    }}
}}
",
        common = q8_input_common(nr, spl, lay.units_per_block(), k4, &decl, &deq),
        store = decode_store("grp"),
        nq = k4 / 4,
        ns = k4 / 8,
    ))
}

/// [`q8_parts`] of an integer mat-vec that rounds its own input of `k4`·4 values
/// ([`persist_fits`]; `what` names the kernel in the error).
#[allow(clippy::too_many_arguments)]
fn own_input_parts(
    ctx: &GpuContext,
    what: &str,
    ty: u32,
    nr: u32,
    spl: u32,
    k4: u32,
    act: u32,
    norm: bool,
) -> Result<(GpuLayout, String, String, String)> {
    if !persist_fits(k4, act, norm) {
        return Err(Error::msg(format!(
            "{what} integer mat-vec: {} input values with rounding kind {act} (norm {norm})",
            4 * k4
        )));
    }
    q8_parts(ctx, ty, nr, spl)
}

/// The parameter block of the decode mat-vec kernels (`shaders/matvec.wgsl`'s `Params`).
const PARAMS_STRUCT: &str = "struct Params { rows: u32, units: u32, d_off: u32, x_off: u32, ld_x: u32, y_off: u32, ld_y: u32, n_tok: u32, mode: u32, row0: u32, pad0: u32, pad1: u32 }";

/// Constants, workgroup memory and functions shared by the integer mat-vecs that round their
/// own input ([`KernelKey::MatVecQ8P`], [`KernelKey::MatVecQ8W`]).
fn q8_input_common(nr: u32, spl: u32, upb: usize, k4: u32, decl: &str, deq: &str) -> String {
    format!(
        "const NR: u32 = {nr}u;
const RPW: u32 = {rpw}u;
const UPB: u32 = {upb}u;
const K4: u32 = {k4}u;
var<workgroup> res: array<f32, RPW>;
var<workgroup> nred: array<f32, 256>;
var<workgroup> mx: array<f32, 256>;
{decl}
{fns}
fn amax4(v: vec4<f32>) -> f32 {{
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}}

{deq}
",
        rpw = (256 / spl) * nr,
        fns = actq_functions(),
    )
}

/// The rounding of a mat-vec's own input, as [`KernelKey::NormQ8`] (`norm`: the whole
/// residual row, RMSNorm first) or `actq.wgsl` compute it: the 4096 values from 16-value
/// group `qb` (a WGSL expression), f32 vec4 `$I` read by `load`, quants and scales written by
/// `store_q` / `store_s` ([`normq8_quantize`]).
fn input_rounding(
    ctx: &GpuContext,
    act: u32,
    norm: bool,
    load: &str,
    qb: &str,
    store_q: &str,
    store_s: &str,
) -> String {
    let store = normq8_quantize(act, ctx.tune.actq_fastdiv, store_q, store_s);
    if norm {
        let reduce = if ctx.subgroup32 {
            NORM_SUBGROUP
        } else {
            NORM_TREE
        };
        return format!("    let qb = {qb};\n{}{store}", normq8_norm(reduce, load));
    }
    let ld = |i: &str| load.replace("$I", i);
    format!(
        "    let qb = {qb};
    let live = (qb + lid) * 4u < K4;
    let i0 = min(qb + lid, K4 / 4u - 1u) * 4u;
    let v0 = {l0};
    let v1 = {l1};
    let v2 = {l2};
    let v3 = {l3};
    mx[lid] = select(0.0, max(max(amax4(v0), amax4(v1)), max(amax4(v2), amax4(v3))), live);
    workgroupBarrier();
{store}",
        l0 = ld("i0"),
        l1 = ld("i0 + 1u"),
        l2 = ld("i0 + 2u"),
        l3 = ld("i0 + 3u"),
    )
}

/// The one-token store of a decode mat-vec's `RPW` sums of row group `group` (a WGSL
/// expression) in every output mode (`shaders/matvec.wgsl`'s, for one token).
fn decode_store(group: &str) -> String {
    format!(
        "    if (lid < RPW) {{
        let rr = {group} * RPW + lid;
        if (rr < P.rows) {{
            let v = res[lid];
            let orow = P.row0 + rr;
            let o = P.y_off + orow;
            if (P.mode == 0u) {{
                Y[o] = v;
            }} else if (P.mode == 1u) {{
                Y[o] = Y[o] + v;
            }} else if (P.mode == 3u) {{
                let g = Y[o + P.pad0];
                Y[o] = g / (1.0 + exp(-g)) * v;
            }} else if ((orow & 1u) == 0u) {{
                let up = res[lid + 1u];
                Y[P.y_off + orow / 2u] = v / (1.0 + exp(-v)) * up;
            }}
        }}
    }}
"
    )
}

/// Producer workgroups of [`KernelKey::MatVecQ8W`] for an input of `k4`·4 values: 1 with
/// the norm, else one per 4096 values.
pub fn wait_producers(k4: u32, norm: bool) -> u32 {
    if norm {
        1
    } else {
        k4.div_ceil(1024)
    }
}

/// WGSL of [`KernelKey::MatVecQ8W`]: the producers run [`matvec_q8p_source`]'s prologue
/// text (the NormQ8 operations, or the rounding of 4096 values per workgroup) with the
/// packed region in global memory instead of workgroup memory, count themselves, and every
/// workgroup then runs [`matvec_q8_source`]'s body and store on its own rows.
#[allow(clippy::too_many_arguments)]
fn matvec_q8w_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    k4: u32,
    act: u32,
    norm: bool,
    touch: bool,
) -> Result<String> {
    let (lay, deq, body, decl) = own_input_parts(ctx, "waiting", ty, nr, spl, k4, act, norm)?;
    let pro = input_rounding(
        ctx,
        act,
        norm,
        "XR[$I]",
        if norm { "0u" } else { "wg.x * 256u" },
        "X[P.ld_x / 4u + qb + lid] = vec4<u32>(p0, p1, p2, p3);",
        "let so = P.ld_x + P.ld_x / 4u + (qb + lid) / 2u;
                X[so >> 2u][so & 3u] = bitcast<u32>(sd);",
    );
    let nw_decl = if norm {
        "@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;"
    } else {
        ""
    };
    let mut touch_code = String::new();
    if touch {
        // The weights of this lane's first unit of each row (the body's first loop step)
        // with an input the compiler cannot know; the sum goes to workgroup memory before
        // the wait, so the loads are issued (and land in the caches) while it lasts.
        touch_code.push_str("    {\n        let tu = lid % SPL;\n        let zx = vec4<u32>(P.n_tok);\n        let zs = i32(P.n_tok);\n        var tch = 0.0;\n        if (tu < P.units) {\n");
        for r in 0..nr {
            touch_code.push_str(&format!("            let tg_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + tu;\n            tch += idot(tg_{r} / UPB, tg_{r} % UPB, zx, zx, zs, zs);\n"));
        }
        touch_code.push_str("        }\n        mx[lid] = tch;\n    }\n");
    }
    Ok(format!(
        "{PARAMS_STRUCT}
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read_write> X: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> XR: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> P: Params;
{nw_decl}
@group(0) @binding(6) var<storage, read_write> F: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> FR: array<atomic<u32>>;
const NP: u32 = {np}u;
{common}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let warp = lid / 32u;
    let lane = lid % 32u;
    let rbase = wg.x * RPW + (lid / SPL) * NR;
    if (wg.x < NP) {{
    {{
{pro}    }}
        storageBarrier();
        if (lid == 0u) {{
            atomicAdd(&F[0], 1u);
            if (wg.x == 0u) {{
                atomicStore(&FR[0], 0u);
            }}
        }}
    }}
{touch_code}    if (lid == 0u) {{
        loop {{
            if (atomicLoad(&F[0]) >= NP) {{
                break;
            }}
        }}
    }}
    storageBarrier();
{body}
    workgroupBarrier();
{store}}}
",
        np = wait_producers(k4, norm),
        common = q8_input_common(nr, spl, lay.units_per_block(), k4, &decl, &deq),
        store = decode_store("wg.x"),
    ))
}

/// WGSL of [`KernelKey::MatVecQ8F`]: the integer decode kernel of [`matvec_q8_source`] (same
/// lanes, rows and reduction) whose input X is the f32 row itself. Every lane rounds the
/// 32-value unit it dots as `actq.wgsl` / [`KernelKey::NormQ8`] do (same operations, so the
/// same quants and scales): the unit's largest |value|, for Q8_K (`act` 4) the maximum over
/// the 8 lanes of a 256-value block (subgroup shuffles, or workgroup memory without
/// subgroups), then the scale by `div_rn` and the int8 quants in registers. The loop runs
/// the same number of steps in every lane (units past the row take part in the block maxima
/// with 0 and dot nothing). `norm`: RMSNorm of the whole row first, Σx² reduced over the
/// row group (one barrier with subgroups), each value x · inv · w as the NormQ8 kernel.
fn matvec_q8f_source(
    ctx: &GpuContext,
    ty: u32,
    nr: u32,
    spl: u32,
    act: u32,
    norm: bool,
) -> Result<String> {
    let gt =
        GgmlType::from_id(ty).ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
    if !matches!(spl, 32 | 64 | 128 | 256)
        || !matches!(nr, 1 | 2 | 4 | 8 | 16)
        || !matches!(act, 3 | 4)
    {
        return Err(Error::msg(format!(
            "integer mat-vec with rounding: {spl} lanes per row group, {nr} rows per group, rounding kind {act}"
        )));
    }
    let (lay, deq) = int_deq(gt)?;
    let nr = nr as usize;
    let wpg = spl / 32;
    let mut decl = format!(
        "{}\nfn amax4(v: vec4<f32>) -> f32 {{\n    let a = abs(v);\n    return max(max(a.x, a.y), max(a.z, a.w));\n}}\n",
        actq_functions()
    );
    let mut body = String::new();
    for r in 0..nr {
        body.push_str(&format!("    var acc_{r}_0 = 0.0;\n"));
    }
    body.push_str("    let gl = lid % SPL;\n    let nit = (P.units + SPL - 1u) / SPL;\n");
    if norm {
        decl.push_str("@group(0) @binding(4) var<storage, read> NW: array<vec4<f32>>;\nvar<workgroup> nred: array<f32, 256>;\n");
        body.push_str(
            "    var ss = 0.0;
    for (var it = 0u; it < nit; it++) {
        let u = gl + it * SPL;
        if (u < P.units) {
            let b = P.x_off + u * 8u;
            let a0 = X[b];
            let a1 = X[b + 1u];
            let a2 = X[b + 2u];
            let a3 = X[b + 3u];
            let a4 = X[b + 4u];
            let a5 = X[b + 5u];
            let a6 = X[b + 6u];
            let a7 = X[b + 7u];
            ss += ((dot(a0, a0) + dot(a1, a1)) + (dot(a2, a2) + dot(a3, a3))) + ((dot(a4, a4) + dot(a5, a5)) + (dot(a6, a6) + dot(a7, a7)));
        }
    }
",
        );
        if ctx.subgroup32 {
            body.push_str(&format!(
                "    let wss = subgroupAdd(ss);
    if (lane == 0u) {{ nred[warp] = wss; }}
    workgroupBarrier();
    var tot = 0.0;
    for (var w = 0u; w < {wpg}u; w++) {{ tot += nred[(lid / SPL) * {wpg}u + w]; }}
"
            ));
        } else {
            body.push_str(
                "    nred[lid] = ss;
    workgroupBarrier();
    for (var s = SPL / 2u; s > 0u; s >>= 1u) {
        if (gl < s) { nred[lid] += nred[lid + s]; }
        workgroupBarrier();
    }
    let tot = nred[lid - gl];
",
            );
        }
        body.push_str(
            "    let inv = 1.0 / sqrt(tot / f32(P.units * 32u) + bitcast<f32>(P.pad1));\n",
        );
    }
    body.push_str(
        "    for (var it = 0u; it < nit; it++) {
        let u = gl + it * SPL;
        let live = u < P.units;
        let b = P.x_off + min(u, P.units - 1u) * 8u;
",
    );
    for j in 0..8 {
        if norm {
            body.push_str(&format!(
                "        let v{j} = X[b + {j}u] * inv * NW[min(u, P.units - 1u) * 8u + {j}u];\n"
            ));
        } else {
            body.push_str(&format!("        let v{j} = X[b + {j}u];\n"));
        }
    }
    body.push_str("        var am = select(0.0, max(max(max(amax4(v0), amax4(v1)), max(amax4(v2), amax4(v3))), max(max(amax4(v4), amax4(v5)), max(amax4(v6), amax4(v7)))), live);\n");
    if act == 4 {
        // Q8_K: the block's 256 values are the units of 8 consecutive lanes.
        if ctx.subgroup32 {
            body.push_str("        am = max(am, subgroupShuffleXor(am, 1u));\n        am = max(am, subgroupShuffleXor(am, 2u));\n        am = max(am, subgroupShuffleXor(am, 4u));\n");
        } else {
            decl.push_str("var<workgroup> um: array<f32, 256>;\n");
            body.push_str("        um[lid] = am;\n        workgroupBarrier();\n        let g8 = lid & ~7u;\n        am = max(max(max(um[g8], um[g8 + 1u]), max(um[g8 + 2u], um[g8 + 3u])), max(max(um[g8 + 4u], um[g8 + 5u]), max(um[g8 + 6u], um[g8 + 7u])));\n        workgroupBarrier();\n");
        }
        body.push_str(
            "        var sx = 0.0;
        var dx = 0.0;
        if (am != 0.0) {
            sx = div_rn(127.0, am);
            dx = div_rn(1.0, sx);
        }
",
        );
        decl.push_str("fn pkq(v: vec4<f32>, s: f32) -> u32 {\n    return pack4xI8(vec4<i32>(min(round(s * v), vec4<f32>(127.0))));\n}\n");
    } else {
        body.push_str("        let sx = select(0.0, div_rn(127.0, am), am != 0.0);\n        let dx = round_f16(div_rn(am, 127.0));\n");
        decl.push_str(
            "fn pkq(v: vec4<f32>, s: f32) -> u32 {\n    return pack4xI8(vec4<i32>(round(v * s)));\n}\n",
        );
    }
    body.push_str("        let xa = vec4<u32>(pkq(v0, sx), pkq(v1, sx), pkq(v2, sx), pkq(v3, sx));\n        let xb = vec4<u32>(pkq(v4, sx), pkq(v5, sx), pkq(v6, sx), pkq(v7, sx));\n");
    body.push_str("        let one = 0x01010101u;\n        let sx0 = (dot4I8Packed(xa.x, one) + dot4I8Packed(xa.y, one)) + (dot4I8Packed(xa.z, one) + dot4I8Packed(xa.w, one));\n        let sx1 = (dot4I8Packed(xb.x, one) + dot4I8Packed(xb.y, one)) + (dot4I8Packed(xb.z, one) + dot4I8Packed(xb.w, one));\n");
    body.push_str("        if (live) {\n");
    for r in 0..nr {
        body.push_str(&format!("            let gu_{r} = min(rbase + {r}u, P.rows - 1u) * P.units + u;\n            acc_{r}_0 += dx * idot(gu_{r} / UPB, gu_{r} % UPB, xa, xb, sx0, sx1);\n"));
    }
    body.push_str("        }\n    }\n");
    let red = q8u_reduce(ctx, nr, spl, 256, &mut body);
    let rpw = (256 / spl) as usize * nr;
    Ok(matvec_wgsl(&MatVecParts {
        rpw,
        warp_rows: "(lid / SPL) * NR",
        nt: 1,
        nr,
        upb: lay.units_per_block(),
        red_decl: &format!("const SPL: u32 = {spl}u;\n{red}"),
        xty: "vec4<f32>",
        body: &body,
        deq: &deq,
        norm_decl: &decl,
        norm_pro: "",
    }))
}

/// WGSL of [`KernelKey::NormQ8`]: the fused mat-vec prologue (RMSNorm, then the rounding
/// `act` into int8 quants) in one workgroup, stored as the packed region that
/// [`KernelKey::MatVecQ8`] reads (quants from word `P.ld_x`, then the scales).
fn normq8_source(ctx: &GpuContext, k4: u32, act: u32) -> Result<String> {
    if !matches!(act, 3 | 4) || k4 % 32 != 0 {
        return Err(Error::msg(format!(
            "decode norm + rounding: kind {act} over {} values",
            4 * k4
        )));
    }
    if k4 <= 1024 {
        return Ok(normq8_regs_source(ctx, k4, act));
    }
    let norm = if ctx.subgroup32 {
        NORM_PROLOGUE.replace(NORM_TREE, NORM_SUBGROUP)
    } else {
        NORM_PROLOGUE.to_string()
    };
    let (decl, pro) = act_prologue(act, k4, true)?;
    Ok(format!(
        "struct Params {{ rows: u32, units: u32, d_off: u32, x_off: u32, ld_x: u32, y_off: u32, ld_y: u32, n_tok: u32, mode: u32, row0: u32, pad0: u32, pad1: u32 }}
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> NW: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Q: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> P: Params;
const K4: u32 = {k4}u;
var<workgroup> xs: array<vec4<f32>, K4>;
var<workgroup> nred: array<f32, 256>;
{decl}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {{
{norm}
    let q0 = P.ld_x / 4u;
    for (var i = lid; i < K4 / 8u; i += 256u) {{
        Q[q0 + 2u * i] = xqa[i];
        Q[q0 + 2u * i + 1u] = xqb[i];
    }}
    let s0 = P.ld_x + P.ld_x / 4u;
    for (var i = lid; i < K4 / 32u; i += 256u) {{
        Q[s0 / 4u + i] = bitcast<vec4<u32>>(vec4<f32>(xd[4u * i], xd[4u * i + 1u], xd[4u * i + 2u], xd[4u * i + 3u]));
    }}
}}
"
    )
    .replace("$ACT_PRO", &pro))
}

/// Threads per activation block, scale code and quant expression of [`normq8_regs_source`]
/// for activation kind `act` (3: Q8_0 / Q8_1 blocks of 32 values, otherwise Q8_K of 256); the
/// scales divided by `div_fast` (`fast`, [`Tune::actq_fastdiv`]) or `div_rn`: the same
/// correctly rounded quotients.
fn normq8_rounding(act: u32, fast: bool) -> (u32, String, &'static str) {
    let div = if fast { "div_fast" } else { "div_rn" };
    if act == 3 {
        (
            2,
            format!(
                "let sx = select(0.0, {div}(127.0, amax), amax != 0.0);
    let sd = round_f16({div}(amax, 127.0));"
            ),
            "round(v * sx)",
        )
    } else {
        (
            16,
            format!(
                "var sx = 0.0;
    var sd = 0.0;
    if (amax != 0.0) {{
        sx = {div}(127.0, amax);
        sd = {div}(1.0, sx);
    }}"
            ),
            "min(round(sx * v), vec4<f32>(127.0))",
        )
    }
}

/// The normalisation part of [`KernelKey::NormQ8`] in registers: each thread loads 16
/// consecutive values (vec4 `i` through `load`, e.g. `X[P.x_off + $I]`, `$I` replaced by the
/// index), Σx² is reduced (`reduce`), then x · inv · w and the per-thread maxima go to `mx`.
/// Shared by the NormQ8 kernel and the mat-vec NormQ8 epilogue, so both give the same values.
fn normq8_norm(reduce: &str, load: &str) -> String {
    let ld = |i: &str| load.replace("$I", i);
    format!(
        "    let live = lid * 4u < K4;
    let i0 = min(lid, K4 / 4u - 1u) * 4u;
    let a0 = {l0};
    let a1 = {l1};
    let a2 = {l2};
    let a3 = {l3};
    let n0 = NW[i0];
    let n1 = NW[i0 + 1u];
    let n2 = NW[i0 + 2u];
    let n3 = NW[i0 + 3u];
    var ss = 0.0;
    if (live) {{
        ss = ((dot(a0, a0) + dot(a1, a1)) + dot(a2, a2)) + dot(a3, a3);
    }}
{reduce}    let inv = 1.0 / sqrt(tot / f32(K4 * 4u) + bitcast<f32>(P.pad1));
    let v0 = a0 * inv * n0;
    let v1 = a1 * inv * n1;
    let v2 = a2 * inv * n2;
    let v3 = a3 * inv * n3;
    mx[lid] = select(0.0, max(max(amax4(v0), amax4(v1)), max(amax4(v2), amax4(v3))), live);
    workgroupBarrier();
",
        l0 = ld("i0"),
        l1 = ld("i0 + 1u"),
        l2 = ld("i0 + 2u"),
        l3 = ld("i0 + 3u"),
    )
}

/// [`KernelKey::NormQ8`] for rows of at most 4096 values: each thread holds 16 consecutive
/// values in registers (half a 32-value unit), so the kernel needs two workgroup barriers
/// (the sum of squares, the block maxima) instead of the prologue's tree passes. Same
/// operations per value as the prologue and `actq.wgsl`, so the same quants and scales
/// (up to the order of the sum of squares).
fn normq8_regs_source(ctx: &GpuContext, k4: u32, act: u32) -> String {
    let reduce = if ctx.subgroup32 {
        NORM_SUBGROUP
    } else {
        NORM_TREE
    };
    let quantize = normq8_quantize(
        act,
        ctx.tune.actq_fastdiv,
        "let o = P.ld_x + 4u * lid;
            Q[o] = p0;
            Q[o + 1u] = p1;
            Q[o + 2u] = p2;
            Q[o + 3u] = p3;",
        "Q[P.ld_x + P.ld_x / 4u + lid / 2u] = bitcast<u32>(sd);",
    );
    format!(
        "struct Params {{ rows: u32, units: u32, d_off: u32, x_off: u32, ld_x: u32, y_off: u32, ld_y: u32, n_tok: u32, mode: u32, row0: u32, pad0: u32, pad1: u32 }}
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> NW: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Q: array<u32>;
@group(0) @binding(3) var<uniform> P: Params;
const K4: u32 = {k4}u;
var<workgroup> nred: array<f32, 256>;
var<workgroup> mx: array<f32, 256>;
{fns}
fn amax4(v: vec4<f32>) -> f32 {{
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {{
{norm}{quantize}}}
",
        fns = actq_functions(),
        norm = normq8_norm(reduce, "X[P.x_off + $I]"),
    )
}

/// The rounding part of [`KernelKey::NormQ8`] after [`normq8_norm`], in a block of its own:
/// each activation block's maximum over the `mx` entries of its threads, the
/// [`normq8_rounding`] scales, the thread's 16 quants packed as `p0` … `p3` and written by
/// `store_q`, the block scale `sd` written by `store_s` (even threads). One text for the
/// NormQ8 kernel, the mat-vec NormQ8 epilogue and the persistent mat-vec's prologue, so all
/// three give the same bits.
fn normq8_quantize(act: u32, fast: bool, store_q: &str, store_s: &str) -> String {
    let (tpb, scale, q) = normq8_rounding(act, fast);
    format!(
        "    {{
        let g0 = lid - lid % {tpb}u;
        var amax = 0.0;
        for (var j = 0u; j < {tpb}u; j++) {{
            amax = max(amax, mx[g0 + j]);
        }}
        {scale}
        if (live) {{
            var v = v0;
            let p0 = pack4xI8(vec4<i32>({q}));
            v = v1;
            let p1 = pack4xI8(vec4<i32>({q}));
            v = v2;
            let p2 = pack4xI8(vec4<i32>({q}));
            v = v3;
            let p3 = pack4xI8(vec4<i32>({q}));
            {store_q}
            if (lid % 2u == 0u) {{
                {store_s}
            }}
        }}
    }}
"
    )
}

/// RMSNorm prologue of the fused decode mat-vec: the workgroup reduces Σx² of its input row,
/// then stores x · inv · w into workgroup memory (as the RMSNorm kernel computes it).
const NORM_PROLOGUE: &str = "    var ss = 0.0;
    for (var i = lid; i < K4; i += 256u) {
        let v = X[P.x_off + i];
        ss += dot(v, v);
    }
    nred[lid] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { nred[lid] += nred[lid + s]; }
        workgroupBarrier();
    }
    let tot = nred[0];
    let inv = 1.0 / sqrt(tot / f32(K4 * 4u) + bitcast<f32>(P.pad1));
    for (var i = lid; i < K4; i += 256u) {
        xs[i] = X[P.x_off + i] * inv * NW[i];
    }
    workgroupBarrier();
$ACT_PRO";

/// `shaders/actq.wgsl` with its block scales computed by one lane per block or by every
/// thread ([`Tune::actq_div`]), divided by `div_fast` or `div_rn` ([`Tune::actq_fastdiv`]),
/// and its subgroup path ([`Tune::actq_sub`]) kept where 32-wide subgroups run it (or
/// emulated), else cut out.
fn actq_source(ctx: &GpuContext) -> Result<String> {
    let t = &ctx.tune;
    let sub = match t.actq_sub {
        1 if ctx.subgroup32 => 1,
        2 => 2,
        _ => 0,
    };
    let b = |v: bool| if v { "true" } else { "false" };
    let mut s = ACTQ_WGSL
        .replace("$LANE_DIV", b(t.actq_div))
        .replace("$SUB", b(sub != 0))
        .replace("$FAST_DIV", b(t.actq_fastdiv))
        .replace("$DIV_SKEW", &t.div_skew.to_string());
    let internal = |what: &str| Error::msg(format!("internal: actq.wgsl has no {what}"));
    let (open, close) = ("    // SUBGROUP{\n", "    // }SUBGROUP\n");
    let a = s.find(open).ok_or_else(|| internal("SUBGROUP region"))?;
    let z = s
        .find(close)
        .ok_or_else(|| internal("SUBGROUP region end"))?
        + close.len();
    if sub == 0 {
        s.replace_range(a..z, "");
        return Ok(s);
    }
    for (from, on, emu) in [
        (
            "SG_MAX(abs(v))",
            "subgroupMax(abs(v))",
            "sg_max_emu(abs(v), lid)",
        ),
        (
            "SG_SHUF(qi, j)",
            "subgroupShuffle(qi, j)",
            "sg_shuf_emu(qi, j, lid)",
        ),
        (
            "SG_SHUF(qi, j + 1u)",
            "subgroupShuffle(qi, j + 1u)",
            "sg_shuf_emu(qi, j + 1u, lid)",
        ),
        (
            "SG_SHUF(qi, j + 2u)",
            "subgroupShuffle(qi, j + 2u)",
            "sg_shuf_emu(qi, j + 2u, lid)",
        ),
        (
            "SG_SHUF(qi, j + 3u)",
            "subgroupShuffle(qi, j + 3u)",
            "sg_shuf_emu(qi, j + 3u, lid)",
        ),
    ] {
        if !s.contains(from) {
            return Err(internal(from));
        }
        s = s.replace(from, if sub == 1 { on } else { emu });
    }
    if sub == 2 {
        s.push_str(ACTQ_SUB_EMU);
    }
    Ok(s)
}

/// A test kernel of the rounding's scale division (tests, [`super::actq::divide`]): the
/// declarations and functions of [`actq_source`] (so `div_q` as the rounding compiles it,
/// [`Tune::actq_fastdiv`], [`Tune::div_skew`]) and an entry point that writes
/// `div_q(X[2i], X[2i + 1])` to `Y[i]` for i < `P.k`, 64 per workgroup.
pub fn div_test_source(ctx: &GpuContext) -> Result<String> {
    let s = actq_source(ctx)?;
    let end = s
        .find("@compute")
        .ok_or_else(|| Error::msg("internal: actq.wgsl has no entry point"))?;
    Ok(format!(
        "{}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let i = gid.y * 2097152u + gid.x;
    if (i < P.k) {{
        Y[i] = bitcast<u32>(div_q(X[2u * i], X[2u * i + 1u]));
    }}
}}
",
        &s[..end]
    ))
}

/// The subgroup builtins of actq.wgsl's subgroup path emulated in workgroup memory (32-lane
/// groups of consecutive invocations, as the H100's subgroups), so that the path's lane
/// arithmetic runs on adapters without 32-wide subgroups ([`Tune::actq_sub`] = 2, tests).
/// Called in uniform control flow only; `red` and `qv` are free there.
const ACTQ_SUB_EMU: &str = "
fn sg_max_emu(x: f32, lid: u32) -> f32 {
    workgroupBarrier();
    red[lid] = x;
    workgroupBarrier();
    let b = lid - lid % 32u;
    var m = red[b + 31u];
    for (var j = 0u; j < 31u; j++) {
        m = max(m, red[b + j]);
    }
    workgroupBarrier();
    return m;
}
fn sg_shuf_emu(x: i32, src: u32, lid: u32) -> i32 {
    workgroupBarrier();
    qv[lid] = x;
    workgroupBarrier();
    let r = qv[lid - lid % 32u + src % 32u];
    workgroupBarrier();
    return r;
}
";

/// Workgroup memory of the [`KernelKey::NormRound`] kernel for rows of `k4`·4 values.
pub fn norm_round_shared_bytes(k4: u32) -> u32 {
    // The row (vec4s), the per-vec4 maxima, ≤ k4 / 8 block scales, the reduction.
    16 * k4 + 4 * k4 + k4 + 1024
}

/// WGSL of [`KernelKey::NormRound`]: the RMSNorm kernel's loops (same operations and order,
/// so the same normalised values, written to Y as before), the row kept in workgroup memory,
/// then the fused rounding of the decode prologue ([`act_prologue`]: the operations of
/// `actq.wgsl`), whose result goes to R (same layout as Y).
fn norm_round_source(k4: u32, act: u32) -> Result<String> {
    let (decl, body) = act_prologue(act, k4, false)?;
    // Only the Q8 kinds have block scales (and a packed region).
    let q8 = if matches!(act, 3 | 4) {
        "        if (P.q8_base != 0u) {
            // The int8 quants and per-32 scales of actq.wgsl's packed region (one-token calls
            // whose mat-vecs read them): q = v / d exactly (|q| ≤ 127 times an f16 or f32
            // scale, rounded back to the integer).
            let d = sc[i / BS4].y;
            let q = select(vec4<f32>(0.0), round(v / d), d != 0.0);
            R[P.q8_base + o / 4u] = pack4xI8(vec4<i32>(q));
            if (o % 32u == 0u) {
                R[P.q8_base + P.q8_base / 4u + o / 32u] = bitcast<u32>(d);
            }
        }
"
    } else {
        ""
    };
    Ok(format!(
        "struct Params {{
    n: u32,
    n_tok: u32,
    eps: f32,
    q8_base: u32,
}}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> NW: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;
@group(0) @binding(4) var<storage, read_write> R: array<u32>;

const K4: u32 = {k4}u;
var<workgroup> red: array<f32, 256>;
var<workgroup> xs: array<vec4<f32>, K4>;
{decl}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let base = wg.x * P.n;
    var s = 0.0;
    for (var i = lid; i < P.n; i += 256u) {{
        let v = X[base + i];
        s += v * v;
    }}
    red[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {{
        if (lid < k) {{
            red[lid] += red[lid + k];
        }}
        workgroupBarrier();
    }}
    let inv = 1.0 / sqrt(red[0] / f32(P.n) + P.eps);
    for (var i = lid; i < P.n; i += 256u) {{
        let y = X[base + i] * inv * NW[i];
        Y[base + i] = y;
        xs[i / 4u][i % 4u] = y;
    }}
    workgroupBarrier();
{body}
    for (var i = lid; i < K4; i += 256u) {{
        let v = xs[i];
        let o = base + 4u * i;
        R[o] = bitcast<u32>(v.x);
        R[o + 1u] = bitcast<u32>(v.y);
        R[o + 2u] = bitcast<u32>(v.z);
        R[o + 3u] = bitcast<u32>(v.w);
{q8}    }}
}}
"
    ))
}

/// `div_fast` (its test-only estimate skew 0), `div_rn`, `round_f16` and `round_bf16` of
/// `shaders/actq.wgsl`, for the fused rounding.
fn actq_functions() -> String {
    let start = ACTQ_WGSL.find("fn div_fast").unwrap_or(0);
    let end = ACTQ_WGSL.find("@compute").unwrap_or(ACTQ_WGSL.len());
    ACTQ_WGSL
        .get(start..end)
        .unwrap_or("")
        .replace("DIV_SKEW", "0")
}

/// The activation rounding of `shaders/actq.wgsl` (same operations, so the same values) applied
/// to the normalised input in workgroup memory: `act` 1 f16, 2 bf16, 3 Q8_0/Q8_1 blocks of 32,
/// 4 Q8_K blocks of 256, 0 none. Returns (declarations, prologue code). Block maxima: each
/// vec4's largest |value| into `m4`, then a tree per block over `m4`; the block scales are
/// computed once per block into `sc`, and every thread rounds its vec4s. `q8` (the integer
/// kernel): the quants go to `xqa` (values 0..15 of each 32-value unit) and `xqb` (16..31) as
/// packed int8, the per-unit scales to `xd`, instead of rounded values to `xs`.
fn act_prologue(act: u32, k4: u32, q8: bool) -> Result<(String, String)> {
    let bs4 = match act {
        0 => return Ok((String::new(), String::new())),
        1 | 2 => {
            let f = if act == 1 { "round_f16" } else { "round_bf16" };
            return Ok((
                actq_functions().to_string(),
                format!(
                    "    for (var i = lid; i < K4; i += 256u) {{\n\
                     \x20       let v = xs[i];\n\
                     \x20       xs[i] = vec4<f32>({f}(v.x), {f}(v.y), {f}(v.z), {f}(v.w));\n\
                     \x20   }}\n\
                     \x20   workgroupBarrier();\n"
                ),
            ));
        }
        3 => 8u32,
        4 => 64,
        _ => return Err(Error::msg(format!("unknown activation rounding {act}"))),
    };
    if k4 % bs4 != 0 {
        return Err(Error::msg(format!(
            "fused activation rounding: a row of {} values is not whole {}-value blocks",
            4 * k4,
            4 * bs4
        )));
    }
    let mut decl = format!(
        "{}\nconst BS4: u32 = {bs4}u;\nvar<workgroup> m4: array<f32, K4>;\nvar<workgroup> sc: array<vec2<f32>, K4 / BS4>;\n",
        actq_functions()
    );
    let scale = if act == 3 {
        // Q8_0 / Q8_1: d = amax / 127 stored as f16, q = round(x · 127 / amax).
        "sc[b] = vec2<f32>(select(0.0, div_rn(127.0, amax), amax != 0.0), round_f16(div_rn(amax, 127.0)));"
    } else {
        // Q8_K: iscale = 127 / amax, d = 1 / iscale; an all-zero block stays zero.
        "var iscale = 0.0;
        var dq = 0.0;
        if (amax != 0.0) {
            iscale = div_rn(127.0, amax);
            dq = div_rn(1.0, iscale);
        }
        sc[b] = vec2<f32>(iscale, dq);"
    };
    let apply = if act == 3 {
        "xs[i] = round(xs[i] * s.x) * s.y;"
    } else {
        "xs[i] = min(round(s.x * xs[i]), vec4<f32>(127.0)) * s.y;"
    };
    let q8_apply = if q8 {
        let q = if act == 3 {
            "round(v * s)"
        } else {
            "min(round(s * v), vec4<f32>(127.0))"
        };
        decl.push_str(&format!(
            "var<workgroup> xqa: array<vec4<u32>, K4 / 8u>;\n\
             var<workgroup> xqb: array<vec4<u32>, K4 / 8u>;\n\
             var<workgroup> xd: array<f32, K4 / 8u>;\n\
             fn pkq(v: vec4<f32>, s: f32) -> u32 {{\n    return pack4xI8(vec4<i32>({q}));\n}}\n"
        ));
        Some(
            "    for (var i = lid; i < K4 / 8u; i += 256u) {
        let s = sc[(i * 8u) / BS4];
        let o = i * 8u;
        xqa[i] = vec4<u32>(pkq(xs[o], s.x), pkq(xs[o + 1u], s.x), pkq(xs[o + 2u], s.x), pkq(xs[o + 3u], s.x));
        xqb[i] = vec4<u32>(pkq(xs[o + 4u], s.x), pkq(xs[o + 5u], s.x), pkq(xs[o + 6u], s.x), pkq(xs[o + 7u], s.x));
        xd[i] = s.y;
    }
    workgroupBarrier();
",
        )
    } else {
        None
    };
    let body = format!(
        "    for (var i = lid; i < K4; i += 256u) {{
        let v = abs(xs[i]);
        m4[i] = max(max(v.x, v.y), max(v.z, v.w));
    }}
    workgroupBarrier();
    for (var st = BS4 / 2u; st > 0u; st >>= 1u) {{
        for (var i = lid; i < K4; i += 256u) {{
            if ((i % BS4) < st) {{ m4[i] = max(m4[i], m4[i + st]); }}
        }}
        workgroupBarrier();
    }}
    for (var b = lid; b < K4 / BS4; b += 256u) {{
        let amax = m4[b * BS4];
        {scale}
    }}
    workgroupBarrier();
"
    );
    let body = match q8_apply {
        Some(q) => body + q,
        None => {
            body + &format!(
                "    for (var i = lid; i < K4; i += 256u) {{
        let s = sc[i / BS4];
        {apply}
    }}
    workgroupBarrier();
"
            )
        }
    };
    Ok((decl, body))
}

/// Decode attention's maximum of the scores (`mx` per thread → `m`): a tree in workgroup
/// memory ...
const ATTN_MAX_TREE: &str = "    red[lid] = mx;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
";

/// ... or, with 32-wide subgroups, one maximum per warp, then 8 values.
const ATTN_MAX_SUBGROUP: &str = "    let wmax = subgroupMax(mx);
    if (lid % 32u == 0u) { red[lid / 32u] = wmax; }
    workgroupBarrier();
    let m = max(max(max(red[0], red[1]), max(red[2], red[3])), max(max(red[4], red[5]), max(red[6], red[7])));
    workgroupBarrier();
";

/// Decode attention's sum of the exponentials (`sum` per thread → `inv` = 1 / total), as a
/// tree ...
const ATTN_SUM_TREE: &str = "    red[lid] = sum;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let tot = red[0];
    let inv = 1.0 / tot;
";

/// The input load of `shaders/actq.wgsl`, replaced by [`ATTN_COMBINE`] in the
/// [`KernelKey::AttnCombineQ`] kernel.
const ACTQ_LOAD: &str = "v = X[o];";

/// Combination of the split decode attention's partial results. EXACT: their sum (each is
/// already normalised by the head's maximum and sum). Else (X: per (token, head, chunk)
/// `hd` accumulator values normalised by the chunk's own sum, then from word `P.pad3` the
/// chunk's maximum and sum): value `i` of token `t`'s attention output. Each chunk weighs
/// sum · exp(max − M) / Σ of those; a lone chunk weighs exactly 1, so contexts of one chunk
/// give the unsplit kernel's values.
const ATTN_COMBINE: &str = "
fn attn_combine(i: u32, t: u32) -> f32 {
    let hd = P.pad1;
    let h = i / hd;
    let base = (t * P.pad2 + h) * NCH;
    if (EXACT) {
        var o = 0.0;
        for (var c = 0u; c < NCH; c++) {
            o += X[(base + c) * hd + i % hd];
        }
        return o;
    }
    var mx = -3.0e38;
    for (var c = 0u; c < NCH; c++) {
        mx = max(mx, X[P.pad3 + 2u * (base + c)]);
    }
    var e: array<f32, NCH>;
    var den = 0.0;
    for (var c = 0u; c < NCH; c++) {
        let s = X[P.pad3 + 2u * (base + c) + 1u];
        var ec = 0.0;
        if (s > 0.0) {
            ec = s * exp(X[P.pad3 + 2u * (base + c)] - mx);
        }
        e[c] = ec;
        den += ec;
    }
    var o = 0.0;
    for (var c = 0u; c < NCH; c++) {
        if (e[c] > 0.0) {
            let w = select(e[c] / den, 1.0, e[c] == den);
            o += w * X[(base + c) * hd + i % hd];
        }
    }
    return o;
}
";

/// The constants [`ATTN_COMBINE`] reads (declared by the decode attention kernel itself in
/// [`KernelKey::AttnDecodeQ`]).
const ATTN_COMBINE_CONSTS: &str = "
const NCH: u32 = $NCHu;
const EXACT: bool = $EXACT;
";

/// `r16(x)`: `x` rounded to the nearest f16 value (ties to even, f16 subnormals, ±inf past
/// 65504, the sign of zero kept), as f32, in plain f32 arithmetic (`round_f16` of `shaders/actq.wgsl`); the kernels
/// that round Q, K, V or attention probabilities to f16 take it at their `$R16`. Not
/// `unpack2x16float(pack2x16float(x))`: on the H100 (NVIDIA 580 Vulkan driver) that round
/// trip left values unrounded, so an f32 cache held other values than the f16 cache
/// (tests/gpu_kv_f16.rs checks this function against the `half` crate on the adapter).
pub const R16_WGSL: &str = "fn r16(x: f32) -> f32 {
    let a = abs(x);
    if (!(a == a)) {
        return x;
    }
    let sign = bitcast<u32>(x) & 0x80000000u;
    if (a >= 65520.0) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    let e = max(i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127, -14);
    let up = bitcast<f32>(u32(10 - e + 127) << 23u);
    let ulp = bitcast<f32>(u32(e - 10 + 127) << 23u);
    return bitcast<f32>(sign | bitcast<u32>(round(a * up) * ulp));
}";

/// The decode-attention kernel a pass past [`Tune::attn_exact_max`] positions runs instead of
/// `key`: the exact split ([`KernelKey::AttnDecode`] / [`KernelKey::AttnDecodeQ`] /
/// [`KernelKey::AttnCombineQ`] with `exact`) becomes flash-decoding proper (each chunk scores
/// only its own positions, against its own maximum and sum; the combine weighs the chunks),
/// with workgroup memory for one chunk. None for every other key.
pub fn long_context_key(key: &KernelKey) -> Option<KernelKey> {
    let chunk = |ctx: u32, nch: u32, lmin: u32| lmin.max(1).max(ctx.div_ceil(nch.max(1)));
    match *key {
        KernelKey::AttnDecode {
            ctx,
            hd,
            nch,
            lmin,
            exact: true,
        } if nch > 1 => Some(KernelKey::AttnDecode {
            ctx: chunk(ctx, nch, lmin),
            hd,
            nch,
            lmin,
            exact: false,
        }),
        KernelKey::AttnDecodeQ {
            ctx,
            hd,
            nch,
            lmin,
            exact: true,
            reset,
        } => Some(KernelKey::AttnDecodeQ {
            ctx: chunk(ctx, nch, lmin),
            hd,
            nch,
            lmin,
            exact: false,
            reset,
        }),
        KernelKey::AttnCombineQ { nch, exact: true } => {
            Some(KernelKey::AttnCombineQ { nch, exact: false })
        }
        _ => None,
    }
}

/// The KV cache's element type and accessors in a kernel that binds `KC` / `VC` as
/// `array<$KV4>` (four values per element: `kc_ld(i)`, and `kc_st(i, v)` where the binding is
/// read_write) or `array<$KV2>` (`kc_st2(j, a, b)`: the pair `j`, as `shaders/rope.wgsl` stores
/// K and V): f16 halves packed two per word (the default, llama.cpp's f16 cache: half the
/// memory and the attention's loads), or f32 ([`Tune::kv_f32`]). Every value stored is already
/// rounded to f16 (`r16`), so both hold the same values and give the same bits. Other kernels
/// are returned unchanged.
fn kv_storage(ctx: &GpuContext, text: String) -> String {
    let (four, two) = (text.contains("$KV4"), text.contains("$KV2"));
    if !four && !two {
        return text;
    }
    let f32 = ctx.tune.kv_f32;
    let mut fns = String::new();
    for b in ["KC", "VC"] {
        let f = b.to_lowercase();
        let write = text.contains(&format!("var<storage, read_write> {b}:"));
        if four && f32 {
            fns += &format!("fn {f}_ld(i: u32) -> vec4<f32> {{ return {b}[i]; }}\n");
            if write {
                fns += &format!("fn {f}_st(i: u32, v: vec4<f32>) {{ {b}[i] = v; }}\n");
            }
        } else if four {
            fns += &format!(
                "fn {f}_ld(i: u32) -> vec4<f32> {{ let w = {b}[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }}\n"
            );
            if write {
                fns += &format!(
                    "fn {f}_st(i: u32, v: vec4<f32>) {{ {b}[i] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw)); }}\n"
                );
            }
        }
        if two && f32 {
            fns += &format!("fn {f}_st2(j: u32, a: f32, b: f32) {{ {b}[j] = vec2<f32>(a, b); }}\n");
        } else if two {
            fns += &format!(
                "fn {f}_st2(j: u32, a: f32, b: f32) {{ {b}[j] = pack2x16float(vec2<f32>(a, b)); }}\n"
            );
        }
    }
    let (t4, t2) = if f32 {
        ("vec4<f32>", "vec2<f32>")
    } else {
        ("vec2<u32>", "u32")
    };
    text.replace("$KV4", t4).replace("$KV2", t2) + &fns
}

/// Bytes per value of the KV cache ([`kv_storage`]): 2 (f16) or 4 ([`Tune::kv_f32`]).
pub fn kv_value_bytes(tune: &Tune) -> usize {
    if tune.kv_f32 {
        4
    } else {
        2
    }
}

/// WGSL of the decode attention (`shaders/attn_decode.wgsl`); `epilogue`: Some for
/// [`KernelKey::AttnDecodeQ`] (each workgroup arrives after its partial result), with whether
/// empty chunks skip that ([`Tune::attn_skip`]); None for the plain kernel.
fn attn_decode_source(
    ctx: &GpuContext,
    n: u32,
    hd: u32,
    nch: u32,
    lmin: u32,
    exact: bool,
    epilogue: Option<bool>,
) -> String {
    let arrive = if epilogue.is_some() {
        "    arrive(lid, h, tok);\n"
    } else {
        ""
    };
    let skip = epilogue.unwrap_or(false);
    let b = |v: bool| if v { "true" } else { "false" };
    // Coalesced scoring: flash-decoding chunks (and, with `attn_coal_exact`, every kernel).
    let coal = ctx.tune.attn_coal > 0 && (!exact || ctx.tune.attn_coal_exact);
    let kg = attn_coal_lanes(hd / 4, ctx.tune.attn_klanes);
    let ku = ctx.tune.attn_coal.max(1);
    let shuffles = ctx.subgroup32;
    let kpart = if coal && !shuffles { 256 * ku } else { 1 };
    let kred = if coal {
        attn_coal_reduce(kg, shuffles)
    } else {
        String::new()
    };
    let (rmax, rsum) = if ctx.subgroup32 {
        (ATTN_MAX_SUBGROUP, ATTN_SUM_SUBGROUP)
    } else {
        (ATTN_MAX_TREE, ATTN_SUM_TREE)
    };
    ATTN_DECODE_WGSL
        .replace("$CTX", &n.to_string())
        .replace("$HD4", &(hd / 4).to_string())
        .replace("$NCH", &nch.to_string())
        .replace("$LMIN", &lmin.max(1).to_string())
        .replace("$EXACT", if exact { "true" } else { "false" })
        .replace("$RED_MAX", rmax)
        .replace("$RED_SUM", rsum)
        .replace("$ARRIVE", arrive)
        .replace("$KPRE", b(ctx.tune.attn_pre & 2 != 0))
        .replace("$VPRE", b(ctx.tune.attn_pre & 1 != 0))
        .replace("$SKIP", b(skip))
        .replace("$COAL", b(coal))
        .replace("$KG", &kg.to_string())
        .replace("$KU", &ku.to_string())
        .replace("$VU", &ctx.tune.attn_vrows.max(1).to_string())
        .replace("$KPART", &kpart.to_string())
        .replace("$KRED", &kred)
}

/// Lanes per K row of the coalesced decode attention (`COAL` in `shaders/attn_decode.wgsl`):
/// `want` (a power of two ≤ 32), or the largest power of two below it that divides the row's
/// vec4 count `hd4`.
pub fn attn_coal_lanes(hd4: u32, want: u32) -> u32 {
    [32u32, 16, 8, 4, 2, 1]
        .into_iter()
        .filter(|g| *g <= want)
        .find(|g| hd4 % g == 0)
        .unwrap_or(1)
}

/// The coalesced decode attention's scoring of one block of rows (`$KRED` in
/// `shaders/attn_decode.wgsl`): each lane's partial dots of its group's `KU` rows, summed
/// over the group's `kg` lanes by subgroup shuffles (`shuffles`: 32-wide subgroups) or
/// through workgroup memory, scaled, stored in `S` and folded into the running maximum.
fn attn_coal_reduce(kg: u32, shuffles: bool) -> String {
    let dot = "            for (var u = 0u; u < KU; u++) {
                var s = 0.0;
                for (var j = 0u; j < KE; j++) {
                    s += dot(qr[j], kk[u * KE + j]);
                }
";
    // The row's scaled score into S (`store`) and into the thread's running maximum.
    let keep = |ind: &str, store: &str| {
        format!(
            "{ind}let p = b + gr + u * NG;
{ind}if (p < s1) {{
{ind}    let sc = s * P.scale;
{ind}    {store}
{ind}    mx = max(mx, sc);
{ind}}}
"
        )
    };
    if shuffles {
        let mut t = dot.to_string();
        let mut k = kg / 2;
        while k > 0 {
            t += &format!("                s += subgroupShuffleXor(s, {k}u);\n");
            k /= 2;
        }
        t + &keep("                ", "if (gl == 0u) { S[p - s0] = sc; }") + "            }\n"
    } else {
        format!(
            "{dot}                kpart[u * 256u + lid] = s;
            }}
            workgroupBarrier();
            if (gl == 0u) {{
                for (var u = 0u; u < KU; u++) {{
                    var s = 0.0;
                    for (var i = 0u; i < KG; i++) {{
                        s += kpart[u * 256u + lid + i];
                    }}
{}                }}
            }}
            workgroupBarrier();
",
            keep("                    ", "S[p - s0] = sc;")
        )
    }
}

/// `shaders/actq.wgsl`'s entry point made a function `actq_main(lid, wg)` of the rounding
/// workgroup (value block `wg.x`, token `wg.y`) for the decode attention kernels: its input
/// load replaced by `load`, `extra` appended, its parameters read from the attention's own
/// (`P.qk`, …), its output at binding 7 and `red` the attention's. Same operations in the same
/// order as the rounding dispatch, so the same quants and scales for the same inputs.
fn actq_attention_fn(ctx: &GpuContext, load: &str, extra: &str) -> Result<String> {
    let internal = |what: &str| Error::msg(format!("internal: actq.wgsl has no {what}"));
    let mut a = actq_source(ctx)?;
    for (from, to) in [
        (
            "@group(0) @binding(0) var<storage, read> X: array<f32>;",
            "",
        ),
        (
            "@group(0) @binding(2) var<storage, read_write> Y: array<u32>;",
            "@group(0) @binding(7) var<storage, read_write> Y: array<u32>;",
        ),
        ("@group(0) @binding(3) var<uniform> P: Params;", ""),
        ("struct Params {", "struct ActqParams {"),
        ("var<workgroup> red: array<f32, 256>;", ""),
        (ACTQ_LOAD, load),
    ] {
        if !a.contains(from) {
            return Err(internal(from));
        }
        a = a.replacen(from, to, 1);
    }
    let entry = regex::Regex::new(
        r"@compute\s*@workgroup_size\(256\)\s*fn main\(@builtin\(local_invocation_index\) lid: u32, @builtin\(workgroup_id\) wg: vec3<u32>\)\s*\{",
    )
    .map_err(|e| Error::msg(format!("internal: {e}")))?;
    if !entry.is_match(&a) {
        return Err(internal("entry point `main(lid, wg)`"));
    }
    let a = entry.replace(&a, "fn actq_main(lid: u32, wg: vec3<u32>) {");
    let text = format!("{a}{extra}");
    // actq.wgsl's parameters → the attention's (the rounding reads token rows from word 0).
    let field =
        regex::Regex::new(r"\bP\.(\w+)").map_err(|e| Error::msg(format!("internal: {e}")))?;
    let mut bad = None;
    let text = field.replace_all(&text, |c: &regex::Captures| {
        let f = &c[1];
        match f {
            "k" => "P.qk",
            "ld" => "P.qld",
            "x_off" => "0u",
            "n_tok" => "P.n_tok",
            "kind" => "P.qkind",
            "q8_base" => "P.q8b",
            // ATTN_COMBINE's head size, heads and (max, sum) word.
            "pad1" => "P.hd",
            "pad2" => "P.n_head",
            "pad3" => "P.pad1",
            _ => {
                bad = Some(f.to_string());
                "P.unknown"
            }
        }
        .to_string()
    });
    if let Some(f) = bad {
        return Err(internal(&format!("mapping for parameter `P.{f}`")));
    }
    Ok(text.into_owned())
}

/// WGSL of [`KernelKey::AttnDecodeS`]: `shaders/attn_decode_seg.wgsl` with its per-head
/// reduction (32-wide subgroups where the adapter has them and a head has ≥ 32 threads, else
/// a tree in workgroup memory) and `actq_main` reading the workgroup's 256 outputs.
fn attn_seg_source(ctx: &GpuContext, n: u32, hd: u32) -> Result<String> {
    if !attn_seg_head_ok(hd) {
        return Err(Error::msg(format!(
            "decode attention by segment needs a head size that divides 256 (hd {hd})"
        )));
    }
    let reduce = if ctx.subgroup32 && hd >= 32 {
        "    let wm = subgroupMax(x);
    let ws = subgroupAdd(x);
    if (lid % 32u == 0u) {
        red[lid / 32u] = select(ws, wm, is_max);
    }
    workgroupBarrier();
    let b = (lid - lid % TH) / 32u;
    var r = red[b];
    for (var i = 1u; i < TH / 32u; i++) {
        r = select(r + red[b + i], max(r, red[b + i]), is_max);
    }
    workgroupBarrier();
    return r;
"
    } else {
        "    red[lid] = x;
    workgroupBarrier();
    for (var s = TH / 2u; s > 0u; s >>= 1u) {
        if (lid % TH < s) {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max);
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % TH];
    workgroupBarrier();
    return r;
"
    };
    // attn_decode.wgsl's new-token block, per head: thread `j` of the head, rows from `hq`.
    let internal = |what: &str| Error::msg(format!("internal: attn_decode.wgsl has no {what}"));
    let a = ATTN_DECODE_WGSL
        .find("    // NEW_TOKEN{")
        .ok_or_else(|| internal("NEW_TOKEN block"))?;
    let a = a + ATTN_DECODE_WGSL[a..].find('\n').unwrap_or(0) + 1;
    let z = ATTN_DECODE_WGSL
        .find("    // }NEW_TOKEN")
        .ok_or_else(|| internal("NEW_TOKEN block end"))?;
    let mut new_token = ATTN_DECODE_WGSL[a..z].to_string();
    for (from, to) in [
        ("if (lid < half) {", "if (j < half) {"),
        ("let k = lid;", "let k = j;"),
        ("s[k / 2u]", "s[hq + k / 2u]"),
    ] {
        if !new_token.contains(from) {
            return Err(internal(from));
        }
        new_token = new_token.replace(from, to);
    }
    let pa = ATTN_DECODE_WGSL
        .find("struct Params {")
        .ok_or_else(|| internal("Params"))?;
    let pz = pa
        + ATTN_DECODE_WGSL[pa..]
            .find("}\n")
            .ok_or_else(|| internal("Params end"))?
        + 2;
    let body = ATTN_DECODE_SEG_WGSL
        .replace("$PARAMS", &ATTN_DECODE_WGSL[pa..pz])
        .replace("$NEW_TOKEN", &new_token)
        .replace("$CTX", &n.to_string())
        .replace("$SCTX", &(n * (256 / hd)).to_string())
        .replace("$HD4", &(hd / 4).to_string())
        .replace("$HEAD_REDUCE", reduce);
    Ok(body + &actq_attention_fn(ctx, "v = aout[lid];", "")?)
}

/// The last-workgroup epilogue of [`KernelKey::AttnDecodeQ`], appended to the decode
/// attention: `arrive` counts the workgroups of a group of 256 / hd heads on a device-scope
/// counter; the last one runs `actq_main`, the text of `shaders/actq.wgsl`'s entry point
/// (with [`ATTN_COMBINE`] as its input, as [`KernelKey::AttnCombineQ`]) made a function of
/// the rounding workgroup (value block `g`, token), with its parameters read from the
/// attention's own (`P.qk`, …) and its partial results from `O`. Same operations in the
/// same order, so the same quants and scales bit for bit.
///
/// WGSL's `storageBarrier()` is a device-scope acquire/release fence on storage memory in
/// naga's SPIR-V (OpControlBarrier, memory scope Device, AcquireRelease | UniformMemory):
/// the fence before the `atomicAdd` publishes this workgroup's partial result, the one
/// after the last arrival makes every other workgroup's visible (CUDA's threadfence
/// reduction). No workgroup waits for another, so no forward-progress assumption.
///
/// With [`Tune::attn_live`] (exact split only) the combine is [`attn_combine_live`]: only the
/// live chunks, all loads first, the same additions.
fn attn_epilogue(ctx: &GpuContext, nch: u32, exact: bool, reset: bool) -> Result<String> {
    let live = exact && ctx.tune.attn_live != 0;
    let text = actq_attention_fn(
        ctx,
        "v = attn_combine(i, t);",
        if live { "" } else { ATTN_COMBINE },
    )?;
    let text = regex::Regex::new(r"\bX\[")
        .map_err(|e| Error::msg(format!("internal: {e}")))?
        .replace_all(&text, "O[");
    let combine = if live {
        attn_combine_live(nch, ctx.tune.attn_live == 2)
    } else {
        String::new()
    };
    // The attention's cut of token t's visible positions [lo, n) into chunks: how many hold
    // a position.
    let live_fn = "
fn live_chunks(t: u32) -> u32 {
    let n = TI[t].y + 1u;
    let lo = select(0u, n - min(n, P.window), P.window > 0u);
    let clen = max(LMIN, (n - lo + NCH - 1u) / NCH);
    return (n - lo + clen - 1u) / clen;
}
";
    Ok(format!(
        "
@group(0) @binding(8) var<storage, read_write> CNT: array<atomic<u32>>;
var<workgroup> wlast: u32;
// Heads per 256-value workgroup of the rounding.
const GH: u32 = 64u / HD4;
const RESET: bool = {reset};
fn arrive(lid: u32, h: u32, tok: u32) {{
    let g = h / GH;
    let h0 = g * GH;
    let need = (min(P.n_head, h0 + GH) - h0) * select(NCH, live_chunks(tok), SKIP);
    let c = tok * ((P.n_head + GH - 1u) / GH) + g;
    // Release: this workgroup's partial result before its arrival.
    storageBarrier();
    if (lid == 0u) {{
        let old = atomicAdd(&CNT[c], 1u);
        wlast = select(0u, 1u, old + 1u == need);
    }}
    if (workgroupUniformLoad(&wlast) == 1u) {{
        // Acquire: every other workgroup's partial result of the group.
        storageBarrier();
        actq_main(lid, vec3<u32>(g, tok, 0u));
        if (RESET && lid == 0u) {{
            atomicStore(&CNT[c], 0u);
        }}
    }}
}}
{text}{combine}{live_fn}"
    ))
}

/// Binding kinds ([`buffer_layouts`]) of [`KernelKey::MatVecAttn`] whose mat-vec binds
/// `mv`: the mat-vec's, then the decode attention's after its QKV input (K cache, V cache,
/// partial results, parameters, token table, RoPE table, the wo input's rounding, the
/// epilogue's counters), then the wait counters.
pub fn matvec_attn_kinds(mv: &[u8]) -> Vec<u8> {
    [mv, b"wwwurrww".as_slice(), b"w".as_slice()].concat()
}

/// Size of the attention's parameter block in [`KernelKey::MatVecAttn`]: the 64 bytes of
/// [`KernelKey::AttnDecodeQ`], then `wslot` (the layer's block of wait counters, one per KV
/// head), `wzero` (the block this dispatch zeroes) and `wall` (1: wait for every KV head,
/// [`Tune::attn_wait_all`]), padded to 16 bytes.
pub const MATVEC_ATTN_PARAMS: u64 = 80;

/// WGSL of [`KernelKey::MatVecAttn`] from the texts of its mat-vec (`mv`) and attention
/// (`at`, as [`Kernels::source`] gives them). The mat-vec's top-level names get the prefix
/// `mv_` and its entry point becomes the function `mv_main`; the attention reads the new
/// token's Q/K/V from the mat-vec's output (`mv_Y`), its bindings follow the mat-vec's, and
/// its entry point starts with the split: workgroup `g` below `mvg` runs `mv_main` on row
/// group `mv_group(g)` (KV-head order, `groups` = `[rq, rk, rv]` query, K and V row groups
/// per KV head; the mat-vec's own row groups are all query rows, then all K rows, then all V
/// rows) and then counts itself on its KV head's wait counter; the others run the attention
/// as workgroup `wg.x - mvg`, which waits for its KV head's `rq + rk + rv` arrivals right
/// before it reads Q/K/V. Workgroup 0 zeroes the counters of the layer before (`wzero`),
/// which finished in an earlier dispatch. The rows cross workgroups through atomics
/// ([`atomic_f32_access`]).
pub fn matvec_attn_source(mv: &str, at: &str, mvg: u32, groups: [u32; 3]) -> Result<String> {
    let [rq, rk, rv] = groups;
    let pg = rq + rk + rv;
    if rq == 0 || rk == 0 || rv == 0 || mvg % pg != 0 {
        return Err(Error::msg(format!(
            "internal: mat-vec + attention kernel: {mvg} row groups are not KV heads of {rq} + {rk} + {rv}"
        )));
    }
    let bad = |what: &str| {
        Err(Error::msg(format!(
            "internal: mat-vec + attention kernel: {what}"
        )))
    };
    // Directives of both first (a module starts with them), each once; the mat-vec with
    // every top-level name prefixed, its entry point a function.
    let mut head: Vec<String> = Vec::new();
    let (mv_items, at_items) = (wgsl_items(mv)?, wgsl_items(at)?);
    add_directives(&at_items, &mut head);
    let (body, size, names) = match prefixed_part(&mv_items, "mv_", &[], &mut head) {
        Ok(p) => p,
        Err(e) => return bad(&format!("the mat-vec: {e}")),
    };
    if !names.contains(&"Y") {
        return bad("the mat-vec has no output Y");
    }
    if size != 256 {
        return bad("the mat-vec's entry point is not the 256-invocation form");
    }
    let (body, top) = shift_bindings(&body, 0)?;
    // The attention: Q/K/V from the mat-vec's output, bindings after the mat-vec's.
    let mut at_text = String::new();
    for it in at_items.iter().filter(|it| !is_directive(it.kw)) {
        at_text.push_str(it.text);
    }
    let qkv = "@group(0) @binding(0) var<storage, read> QKV: array<f32>;";
    let params_end = "    q8b: u32,\n}";
    let at_entry = "fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {\n";
    let new_token = "    // NEW_TOKEN{";
    for (anchor, what) in [
        (qkv, "its QKV binding"),
        (params_end, "its parameter block"),
        (at_entry, "its entry point"),
        (new_token, "the new token's reads"),
    ] {
        if at_text.matches(anchor).count() != 1 {
            return bad(&format!("the attention text without {what}"));
        }
    }
    let at_text = at_text.replace(qkv, "");
    let at_text = rename_idents(&at_text, &HashMap::from([("QKV", "mv_Y".to_string())]));
    let (at_text, _) = shift_bindings(&at_text, top)?;
    let at_text = at_text
        .replace(
            params_end,
            "    q8b: u32,\n    wslot: u32,\n    wzero: u32,\n    wall: u32,\n}",
        )
        .replace(
            at_entry,
            "fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg_all: vec3<u32>) {
    if (wg_all.x < MVG) {
        if (wg_all.x == 0u) {
            for (var i = lid; i < NGRP; i += 256u) {
                atomicStore(&AWF[P.wzero * NGRP + i], 0u);
            }
            workgroupBarrier();
        }
        mv_main(lid, vec3<u32>(mv_group(wg_all.x), wg_all.y, wg_all.z));
        // Release: this workgroup's rows before its arrival.
        storageBarrier();
        if (lid == 0u) {
            atomicAdd(&AWF[P.wslot * NGRP + wg_all.x / PG], 1u);
        }
        return;
    }
    let wg = vec3<u32>(wg_all.x - MVG, wg_all.y, wg_all.z);
",
        )
        .replace(
            new_token,
            "    // Every row group of this head's KV head (its Q/K/V of the new token) before they
    // are read (every KV head's with `wall`). The whole workgroup loops (thread 0 polls, a
    // barrier shares the count), so every warp leaves the wait converged before the
    // coalesced scoring's subgroup shuffles. The rows themselves are read with atomic
    // loads (plain ones returned stale L1 lines on the H100).
    let wkv = (wg.x / NCH) / (P.n_head / P.n_kv);
    let wk0 = select(wkv, 0u, P.wall != 0u);
    let wk1 = select(wkv + 1u, NGRP, P.wall != 0u);
    loop {
        if (lid == 0u) {
            var done = 1u;
            for (var k = wk0; k < wk1; k++) {
                if (atomicLoad(&AWF[P.wslot * NGRP + k]) < PG) {
                    done = 0u;
                }
            }
            wcount = done;
        }
        if (workgroupUniformLoad(&wcount) != 0u) {
            break;
        }
    }
    storageBarrier();
    // NEW_TOKEN{",
        );
    // The hand-off crosses workgroups: the rows' stores and the attention's reads of them
    // go through atomics (a plain `storageBarrier()` does not order plain loads past the
    // H100's L1; see `Tune::lw_atomic`).
    let Some(body) = atomic_array(&body, "mv_Y", true)? else {
        return bad("the mat-vec's output is not a read-write f32 array");
    };
    let at_text = atomic_f32_access(&at_text, "mv_Y")?;
    Ok(format!(
        "{}
// The QKV mat-vec (names prefixed mv_), then the decode attention (KernelKey::MatVecAttn).
{body}
@group(0) @binding({aw}) var<storage, read_write> AWF: array<atomic<u32>>;
const MVG: u32 = {mvg}u;
const RQ: u32 = {rq}u;
const RK: u32 = {rk}u;
const RV: u32 = {rv}u;
const PG: u32 = {pg}u;
const NGRP: u32 = {ngrp}u;
var<workgroup> wcount: u32;
// The mat-vec's row group of joint workgroup g: KV head g / PG's query rows, K rows, V rows.
fn mv_group(g: u32) -> u32 {{
    let k = g / PG;
    let r = g % PG;
    if (r < RQ) {{
        return k * RQ + r;
    }}
    if (r < RQ + RK) {{
        return NGRP * RQ + k * RK + (r - RQ);
    }}
    return NGRP * (RQ + RK) + k * RV + (r - RQ - RK);
}}
{at_text}
",
        head.join("\n"),
        aw = top + 9,
        ngrp = mvg / pg,
    ))
}

/// Whether the decode attention with the epilogue skips its empty chunks ([`Tune::attn_skip`]:
/// only where the epilogue's combine reads the live chunks alone).
fn attn_skips(ctx: &GpuContext, exact: bool) -> bool {
    exact && ctx.tune.attn_live != 0 && ctx.tune.attn_skip
}

/// The exact split's combination for the epilogue ([`Tune::attn_live`]): value `i` of token
/// `t` is the sum of its head's `nch` partial results in chunk order, as [`ATTN_COMBINE`]
/// computes it, but the chunks past the last live one (the attention's cut of the token's
/// visible positions: they hold +0.0) are not read; a literal +0.0 is added in their place, so
/// the additions are the same bit for bit. The loads (of chunk min(c, last)) are written out
/// before the sum so that they are all in flight at once.
/// `drop_one`: the tests' fault injection, one live chunk too few.
fn attn_combine_live(nch: u32, drop_one: bool) -> String {
    let mut loads = String::new();
    let mut sum = String::new();
    for c in 0..nch {
        loads.push_str(&format!(
            "    let x{c} = O[(base + min({c}u, last)) * P.hd + j];\n"
        ));
        sum.push_str(&format!("    o += select(0.0, x{c}, {c}u <= last);\n"));
    }
    let last = if drop_one {
        "max(live_chunks(t), 2u) - 2u"
    } else {
        "live_chunks(t) - 1u"
    };
    format!(
        "
fn attn_combine(i: u32, t: u32) -> f32 {{
    let h = i / P.hd;
    let j = i % P.hd;
    let base = (t * P.n_head + h) * NCH;
    // The last chunk that holds a position.
    let last = {last};
{loads}    var o = 0.0;
{sum}    return o;
}}
"
    )
}

/// ... or per warp with subgroups.
const ATTN_SUM_SUBGROUP: &str = "    let wsum = subgroupAdd(sum);
    if (lid % 32u == 0u) { red[lid / 32u] = wsum; }
    workgroupBarrier();
    let tot = ((red[0] + red[1]) + (red[2] + red[3])) + ((red[4] + red[5]) + (red[6] + red[7]));
    let inv = 1.0 / tot;
";

/// The shared-memory reduction of [`NORM_PROLOGUE`] ...
const NORM_TREE: &str = "    nred[lid] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { nred[lid] += nred[lid + s]; }
        workgroupBarrier();
    }
    let tot = nred[0];
";

/// ... and its replacement with 32-wide subgroups: one subgroup sum per warp, then 8 values.
const NORM_SUBGROUP: &str = "    let wsum = subgroupAdd(ss);
    if (lid % 32u == 0u) { nred[lid / 32u] = wsum; }
    workgroupBarrier();
    let tot = ((nred[0] + nred[1]) + (nred[2] + nred[3])) + ((nred[4] + nred[5]) + (nred[6] + nred[7]));
";

/// A compute bind-group layout over buffers and the pipeline layout with it as group 0.
/// `kinds` has one byte per binding number, in order: `r` read-only storage, `w` read-write
/// storage, `u` uniform, `-` a binding number left unused.
pub fn buffer_layouts(
    ctx: &GpuContext,
    label: &str,
    kinds: &[u8],
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| **k != b'-')
        .map(|(i, k)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match k {
                    b'u' => wgpu::BufferBindingType::Uniform,
                    b'r' => wgpu::BufferBindingType::Storage { read_only: true },
                    _ => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let bgl = ctx
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
    let pl = ctx
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
    (bgl, pl)
}

/// Compiled pipelines, built on first use.
#[derive(Default)]
pub struct Kernels {
    cache: HashMap<KernelKey, wgpu::ComputePipeline>,
}

impl Kernels {
    /// WGSL text of a kernel (public for tests and `--dump-wgsl`).
    pub fn source(ctx: &GpuContext, key: &KernelKey) -> Result<String> {
        Self::source_of(ctx, key).map(|text| kv_storage(ctx, text).replace("$R16", R16_WGSL))
    }

    fn source_of(ctx: &GpuContext, key: &KernelKey) -> Result<String> {
        Ok(match key {
            KernelKey::MatVec { ty, nt, nr } => {
                matvec_source(ctx, *ty, *nt, *nr, None, false, false)?
            }
            KernelKey::MatVecSplitK { ty, nr } => {
                matvec_source(ctx, *ty, 1, *nr, None, true, false)?
            }
            KernelKey::MatVecQ8 { ty, nr, spl } => {
                wide_if(ctx, *ty, matvec_q8_source(ctx, *ty, *nr, *spl)?)?
            }
            KernelKey::MatVecQ8S { ty, nr, spl } => {
                wide_if(ctx, *ty, matvec_q8s_source(ctx, *ty, *nr, *spl)?)?
            }
            KernelKey::MatVecQ8N {
                ty,
                nr,
                spl,
                wg,
                kind,
                qbase,
            } => wide_if(
                ctx,
                *ty,
                matvec_q8n_source(ctx, *ty, *nr, *spl, *wg, *kind, *qbase)?,
            )?,
            KernelKey::MatVecQ8U {
                ty,
                nr,
                spl,
                units,
                wg,
            } => wide_if(
                ctx,
                *ty,
                matvec_q8u_source(ctx, *ty, *nr, *spl, *units, *wg)?,
            )?,
            KernelKey::MatVecQ8E {
                ty,
                nr,
                spl,
                epi,
                atomic,
            } => matvec_q8e_source(ctx, *ty, *nr, *spl, *epi, *atomic)?,
            KernelKey::MatVecQ8F {
                ty,
                nr,
                spl,
                act,
                norm,
            } => matvec_q8f_source(ctx, *ty, *nr, *spl, *act, *norm)?,
            KernelKey::NormQ8 { k4, act } => normq8_source(ctx, *k4, *act)?,
            KernelKey::MatVecQ8R {
                ty,
                nr,
                spl,
                passes,
                mode,
                kind,
                qbase,
                wg,
                scaled,
            } => wide_if(
                ctx,
                *ty,
                matvec_q8r_source(
                    ctx, *ty, *nr, *spl, *passes, *mode, *kind, *qbase, *wg, *scaled,
                )?,
            )?,
            KernelKey::Prefetch => PREFETCH_WGSL.to_string(),
            KernelKey::MatVecQ8W {
                ty,
                nr,
                spl,
                k4,
                act,
                norm,
                touch,
            } => matvec_q8w_source(ctx, *ty, *nr, *spl, *k4, *act, *norm, *touch)?,
            KernelKey::MatVecQ8P {
                ty,
                nr,
                spl,
                k4,
                act,
                norm,
            } => wide_if(
                ctx,
                *ty,
                matvec_q8p_source(ctx, *ty, *nr, *spl, *k4, *act, *norm)?,
            )?,
            KernelKey::MatVecNorm {
                ty,
                nr,
                k4,
                act,
                q8,
            } => {
                if *q8 && !matches!(act, 3 | 4) {
                    return Err(Error::msg(format!(
                        "integer decode kernel with activation rounding {act}"
                    )));
                }
                let src = matvec_source(ctx, *ty, 1, *nr, Some(*k4), false, *q8)?;
                let (decl, body) = act_prologue(*act, *k4, *q8)?;
                src.replace("$ACT_PRO", &body).replace("$ACT_FNS", &decl)
            }
            KernelKey::AttnDecode {
                ctx: n,
                hd,
                nch,
                lmin,
                exact,
            } => attn_decode_source(ctx, *n, *hd, *nch, *lmin, *exact, None),
            KernelKey::AttnDecodeS { ctx: n, hd } => attn_seg_source(ctx, *n, *hd)?,
            KernelKey::AttnDecodeQ {
                ctx: n,
                hd,
                nch,
                lmin,
                exact,
                reset,
            } => {
                if *nch < 2 || *hd == 0 || 256 % *hd != 0 || *hd % 4 != 0 {
                    return Err(Error::msg(format!(
                        "decode attention epilogue needs a split (nch {nch}) and a head size dividing 256 (hd {hd})"
                    )));
                }
                attn_decode_source(
                    ctx,
                    *n,
                    *hd,
                    *nch,
                    *lmin,
                    *exact,
                    Some(attn_skips(ctx, *exact)),
                ) + &attn_epilogue(ctx, *nch, *exact, *reset)?
            }
            KernelKey::MatMat { ty } => {
                let gt = GgmlType::from_id(*ty)
                    .ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
                let lay = layout(gt)?;
                let deq = deq_source(gt, "W", "", "P.d_off")?;
                if ctx.facts.coop_matrix {
                    let tile = ctx.tune.coop_tile(*ty);
                    coop_source(
                        tile,
                        lay.units_per_block(),
                        &deq,
                        gt,
                        ctx.tune.coop_prefetch,
                        ctx.tune.coop_raw,
                        tile.stage_buffers(&ctx.tune, ctx.facts.shared_mem),
                    )
                } else {
                    MATMAT_WGSL
                        .replace("$UPB", &lay.units_per_block().to_string())
                        .replace("$DEQ", &deq)
                }
            }
            KernelKey::Embed { ty } => {
                let gt = GgmlType::from_id(*ty)
                    .ok_or_else(|| Error::msg(format!("unknown ggml type id {ty}")))?;
                EMBED_WGSL
                    .replace("$UPB", &layout(gt)?.units_per_block().to_string())
                    .replace("$DEQ", &deq_source(gt, "W", "", "P.d_off")?)
            }
            KernelKey::Argmax => argmax_source(ctx),
            KernelKey::NormRound { k4, act } => norm_round_source(*k4, *act)?,
            KernelKey::RmsNorm => RMSNORM_WGSL.to_string(),
            KernelKey::Rope => ROPE_WGSL.to_string(),
            KernelKey::Attention { hd, qt, kb } => ATTENTION_WGSL
                .replace("$HD4", &(hd / 4).to_string())
                .replace("$QT", &qt.to_string())
                .replace("$KB", &kb.to_string()),
            KernelKey::AttentionCoop { hd } => attention_coop_source(*hd)?,
            KernelKey::ActQ => actq_source(ctx)?,
            KernelKey::Arch(op) => super::arch::source(*op)?,
            KernelKey::AttnCombineQ { nch, exact } => {
                if !ACTQ_WGSL.contains(ACTQ_LOAD) {
                    return Err(Error::msg(
                        "internal: actq.wgsl has no input load to replace",
                    ));
                }
                actq_source(ctx)?.replace(ACTQ_LOAD, "v = attn_combine(i, t);")
                    + &ATTN_COMBINE_CONSTS
                        .replace("$NCH", &nch.to_string())
                        .replace("$EXACT", if *exact { "true" } else { "false" })
                    + ATTN_COMBINE
            }
            KernelKey::MatVecQ8Multi { parts, n, order } => {
                let parts = parts.get(..*n as usize).ok_or_else(|| {
                    Error::msg(format!("multi mat-vec of {n} parts (at most {MULTI_MAX})"))
                })?;
                matvec_q8_multi_source(ctx, parts, *order)?
            }
            KernelKey::MatVecAttn {
                mv,
                at,
                mvg,
                rq,
                rk,
                rv,
                ..
            } => {
                if !matches!(
                    **mv,
                    KernelKey::MatVecQ8 { .. }
                        | KernelKey::MatVecQ8S { .. }
                        | KernelKey::MatVecQ8Multi { n: 2, order: 0, .. }
                ) || !matches!(**at, KernelKey::AttnDecodeQ { .. })
                {
                    return Err(Error::msg(format!(
                        "a mat-vec and attention dispatch of {mv:?} and {at:?}"
                    )));
                }
                matvec_attn_source(
                    &Self::source(ctx, mv)?,
                    &Self::source(ctx, at)?,
                    *mvg,
                    [*rq, *rk, *rv],
                )?
            }
            KernelKey::MatVecJoin {
                parts,
                groups,
                xs,
                ay,
            } => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    if !matches!(p, KernelKey::MatVecQ8N { .. } | KernelKey::MatVecQ8R { .. }) {
                        return Err(Error::msg(format!("a joint mat-vec dispatch of {p:?}")));
                    }
                    texts.push(Self::source(ctx, p)?);
                }
                matvec_join_source(&texts, groups, xs, ay)?
            }
        })
    }

    /// The pipeline for `key` with an explicit pipeline layout, compiling it on first use.
    pub fn get_with_layout(
        &mut self,
        ctx: &GpuContext,
        key: &KernelKey,
        layout: &wgpu::PipelineLayout,
    ) -> Result<&wgpu::ComputePipeline> {
        if !self.cache.contains_key(key) {
            let src = Self::source(ctx, key)?;
            let pipe = compile_pipeline(ctx, layout, src, ctx.tune.unchecked)
                .map_err(|e| Error::msg(format!("GPU kernel {key:?} failed to compile: {e}")))?;
            self.cache.insert(key.clone(), pipe);
        }
        self.cache
            .get(key)
            .ok_or_else(|| Error::msg(format!("pipeline {key:?} missing from cache")))
    }

    /// A pipeline compiled earlier.
    pub fn cached(&self, key: &KernelKey) -> Result<&wgpu::ComputePipeline> {
        self.cache
            .get(key)
            .ok_or_else(|| Error::msg(format!("pipeline {key:?} was not compiled at load")))
    }
}

/// Compile WGSL `src` (entry point `main`) into a compute pipeline with `layout`; `trusted`
/// leaves out naga's bounds checks and loop bounding. The error is the validation message.
pub(crate) fn compile_pipeline(
    ctx: &GpuContext,
    layout: &wgpu::PipelineLayout,
    src: String,
    trusted: bool,
) -> std::result::Result<wgpu::ComputePipeline, String> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some("ggufq kernel"),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    };
    let module = if trusted {
        // SAFETY: every kernel clamps its own buffer indices (rows and tokens with `min`,
        // positions and sequences checked by `GpuModel::forward` before the dispatch, chunk
        // sizes from the upload), divides only by validated non-zero head counts, and has
        // loops bounded by uniform sizes or, for the counters' waits, by the arrival of
        // workgroups that are scheduled first; the tests run the same kernels with the checks
        // on (GGUFQ_SHADER_CHECKS=1) and off.
        unsafe {
            ctx.device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        }
    } else {
        ctx.device.create_shader_module(desc)
    };
    let pipe = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("ggufq kernel"),
            layout: Some(layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(e.to_string()),
        None => Ok(pipe),
    }
}

/// Most matrices (or weight chunks) one [`KernelKey::MatVecQ8Multi`] dispatch covers: their
/// weight bindings, the input and the output stay within 8 storage bindings, and their
/// parameter blocks (48 bytes each) within one 256-byte parameter slot.
pub const MULTI_MAX: usize = 5;

/// One matrix (or weight chunk) of a [`KernelKey::MatVecQ8Multi`] dispatch: the
/// [`KernelKey::MatVecQ8`] kernel it runs (`ty`, `nr`, `spl`) and its workgroups (row
/// groups).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MultiPart {
    /// Weight type id.
    pub ty: u32,
    /// Rows per row group.
    pub nr: u32,
    /// Lanes per row group.
    pub spl: u32,
    /// Workgroups of this part (its rows / the kernel's rows per workgroup, rounded up).
    pub wgs: u32,
    /// Whether the part scales its outputs by the input row's 1/rms
    /// ([`KernelKey::MatVecQ8S`], [`Tune::block_norm`]).
    pub scaled: bool,
}

impl MultiPart {
    /// The single-matrix kernel this part runs.
    pub fn key(&self) -> KernelKey {
        let (ty, nr, spl) = (self.ty, self.nr, self.spl);
        if self.scaled {
            KernelKey::MatVecQ8S { ty, nr, spl }
        } else {
            KernelKey::MatVecQ8 { ty, nr, spl }
        }
    }
}

/// The workgroup layout of a [`KernelKey::MatVecQ8Multi`] dispatch over `parts`: per part
/// its first workgroup and stride pattern as (period, workgroups of the part per period,
/// offset of the part inside the period). `order` 0: one period holding every part's
/// workgroups one range after the other; 1: periods of `min(wgs)` so that each period
/// holds ⌈wgs / periods⌉ workgroups of every part (the parts' rows spread over the whole
/// grid; workgroups past a part's own count do nothing). Returns the layout and the
/// dispatch's workgroup count.
pub fn multi_layout(parts: &[MultiPart], order: u32) -> (Vec<(u32, u32, u32)>, u32) {
    let periods = if order == 1 {
        parts.iter().map(|p| p.wgs).min().unwrap_or(1).max(1)
    } else {
        1
    };
    let per: Vec<u32> = parts.iter().map(|p| p.wgs.div_ceil(periods)).collect();
    let len: u32 = per.iter().sum();
    let mut off = 0;
    let lay = per
        .iter()
        .map(|&c| {
            let e = (len, c, off);
            off += c;
            e
        })
        .collect();
    (lay, periods * len)
}

/// Workgroups of a [`KernelKey::MatVecQ8Multi`] dispatch ([`multi_layout`]).
pub fn multi_workgroups(parts: &[MultiPart], order: u32) -> u32 {
    multi_layout(parts, order).1
}

/// Bind-group layout kinds of a [`KernelKey::MatVecQ8Multi`] kernel of `n` parts (for
/// [`buffer_layouts`]): part 0's weights, the input, the output, the parameter blocks, then
/// the weights of parts 1 .. n.
pub fn multi_binding_kinds(n: usize) -> Vec<u8> {
    let mut k = b"rrwu".to_vec();
    k.extend(std::iter::repeat_n(b'r', n.saturating_sub(1)));
    k
}

/// The next indexing `name[…]` of `src` from byte `from` on (comments skipped): the bytes of
/// the name and of its `[`, and the byte just past the matching `]`.
fn next_index(src: &str, name: &str, from: usize) -> Result<Option<(usize, usize, usize)>> {
    let b = src.as_bytes();
    let mut i = from;
    while i < b.len() {
        let j = skip_blank(src, i);
        if j != i {
            i = j;
            continue;
        }
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') || (i > 0 && is_ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let id = ident_at(src, i);
        let open = i + id.len();
        if id != name || b.get(open) != Some(&b'[') {
            i = open;
            continue;
        }
        let close = close_of(src, open)
            .ok_or_else(|| Error::msg(format!("internal: an unbalanced index of {name}")))?;
        return Ok(Some((i, open, close)));
    }
    Ok(None)
}

/// `src` with every indexing `name[i]` (comments skipped) replaced by the call `new(i)`.
fn call_access(src: &str, name: &str, new: &str) -> Result<String> {
    let mut out = String::with_capacity(src.len() + src.len() / 8);
    let mut last = 0;
    while let Some((i, open, close)) = next_index(src, name, last)? {
        let index = call_access(&src[open + 1..close - 1], name, new)?;
        out.push_str(&src[last..i]);
        out.push_str(&format!("{new}({index})"));
        last = close;
    }
    out.push_str(&src[last..]);
    Ok(out)
}

/// Binding kinds ([`buffer_layouts`]) of the residual block-rounding mat-vec
/// ([`KernelKey::MatVecQ8N`]: weights, input, residual, norm weights, parameters, packed
/// output).
pub const BLOCK_NORM_KINDS: &[u8] = b"rrwruw";
/// Binding kinds of the rounding SwiGLU mat-vec ([`KernelKey::MatVecQ8R`]: weights, input,
/// output, parameters, packed output).
pub const SWIGLU_Q_KINDS: &[u8] = b"rrwuw";

/// The binding kinds of a kernel that can be a part of [`KernelKey::MatVecJoin`] (as it
/// binds them alone): [`BLOCK_NORM_KINDS`] or [`SWIGLU_Q_KINDS`].
pub fn join_part_kinds(key: &KernelKey) -> Option<&'static [u8]> {
    match key {
        KernelKey::MatVecQ8N { .. } => Some(BLOCK_NORM_KINDS),
        KernelKey::MatVecQ8R { .. } => Some(SWIGLU_Q_KINDS),
        _ => None,
    }
}

/// Binding kinds of [`KernelKey::MatVecJoin`] over `parts`: each part's own kinds after
/// the previous part's (its input binding 1 unused from the second part on; the first
/// part's read-write, as its region may be a later part's output), then the wait counters
/// and the join's parameters. None for a part of another kind.
pub fn join_kinds(parts: &[KernelKey]) -> Option<Vec<u8>> {
    let mut kinds = Vec::new();
    for (k, p) in parts.iter().enumerate() {
        let mut own = join_part_kinds(p)?.to_vec();
        own[1] = if k > 0 { b'-' } else { b'w' };
        kinds.extend(own);
    }
    kinds.extend(b"wu");
    Some(kinds)
}

/// Size of [`KernelKey::MatVecJoin`]'s parameter block (the first part's slot, bound a
/// second time): 16 words unused (the part's own), then the dispatch's block of wait
/// counters (`slot`) and the block it zeroes (`zero`).
pub const MATVEC_JOIN_PARAMS: u64 = 80;

/// WGSL of [`KernelKey::MatVecJoin`] from its parts' texts (as [`Kernels::source`] gives
/// them; `groups`, `xs`, `ay` as in the key). Every part's top-level names get the prefix
/// `p{k}_`, its entry point becomes the function `p{k}_main` and its bindings follow the
/// previous part's ([`join_kinds`]). Workgroup `g` of the dispatch runs the part whose
/// range of `groups` holds it. A part with a successor stores its packed output (`R`)
/// with atomics, then counts itself on its counter of the dispatch's block; the successor's
/// workgroups wait for the full count (one thread polls, a barrier shares the result),
/// copy their input from it into workgroup memory (`p{k}_XS`, atomic loads) and read it
/// there instead of their input binding (which is left out). Workgroup 0 zeroes the
/// block of the dispatch before (`zero`), which finished in an earlier dispatch.
pub fn matvec_join_source(
    texts: &[String],
    groups: &[u32],
    xs: &[[u32; 6]],
    ay: &[bool],
) -> Result<String> {
    let n = texts.len();
    let bad = |what: &str| {
        Err(Error::msg(format!(
            "internal: joint mat-vec dispatch: {what}"
        )))
    };
    if n < 2 || groups.len() != n || xs.len() != n || ay.len() != n {
        return bad("parts, groups, inputs and output flags of different counts");
    }
    if groups.contains(&0) || xs.iter().skip(1).any(|x| x[1] == 0 || x[3] == 0) {
        return bad("a part without workgroups or input");
    }
    let mut head: Vec<String> = Vec::new();
    let mut body = String::new();
    let mut wg_size = None;
    let mut base = 0u32;
    for (k, text) in texts.iter().enumerate() {
        let items = wgsl_items(text)?;
        // The input of a part after the first is read from workgroup memory.
        let x_decl = "var<storage, read> X: array<vec4<u32>>;";
        if k > 0
            && !items
                .iter()
                .any(|it| it.name == "X" && it.text.contains(x_decl))
        {
            return bad(&format!("part {k}'s input is not a vec4 array"));
        }
        let drop: &[&str] = if k > 0 { &["X"] } else { &[] };
        let (part, size, names) = match prefixed_part(&items, &format!("p{k}_"), drop, &mut head) {
            Ok(p) => p,
            Err(e) => return bad(&format!("part {k}: {e}")),
        };
        for name in ["X", "Y", "R", "P"] {
            if !names.contains(&name) {
                return bad(&format!("part {k} has no {name}"));
            }
        }
        if *wg_size.get_or_insert(size) != size {
            return bad("parts of different workgroup sizes");
        }
        let (mut part, top) = shift_bindings(&part, base)?;
        base += top + 1;
        let (x, y, r) = (format!("p{k}_X"), format!("p{k}_Y"), format!("p{k}_R"));
        if k == 0 {
            let decl = format!("var<storage, read> {x}: array<vec4<u32>>;");
            if part.matches(&decl).count() != 1 {
                return bad("the first part's input is not a vec4 array");
            }
            part = part.replace(
                &decl,
                &format!("var<storage, read_write> {x}: array<vec4<u32>>;"),
            );
        } else {
            part = call_access(&part, &x, &format!("p{k}_xs"))?;
            if part.contains(&format!("{x}[")) || part.contains(&format!("&{x}")) {
                return bad(&format!("part {k} reads its input other than by index"));
            }
        }
        if k + 1 < n {
            let Some(p) = atomic_array(&part, &r, false)? else {
                return bad(&format!("part {k}'s packed output is not a u32 array"));
            };
            part = p;
        }
        if ay[k] {
            let Some(p) = atomic_array(&part, &y, true)? else {
                return bad(&format!("part {k}'s output is not an f32 array"));
            };
            part = p;
        }
        body.push_str(&format!("// Part {k} (names prefixed p{k}_).\n{part}\n"));
        if k > 0 {
            let [s0, n0, s1, n1, s2, n2] = xs[k];
            let len = n0 + n1 + n2;
            let (e0, e1, m01) = (s0 + n0, s1 + n1, n0 + n1);
            body.push_str(&format!(
                "// Part {k}'s input, copied from part {p}'s packed output: vec4 words {s0} .. {e0} (quants), {s1} .. {e1} (scales), {s2} .. {e2} (sums).
const p{k}_NXS: u32 = {len}u;
var<workgroup> p{k}_XS: array<vec4<u32>, {len}>;
fn p{k}_xsrc(v: u32) -> u32 {{
    if (v < {n0}u) {{
        return {s0}u + v;
    }}
    if (v < {m01}u) {{
        return {s1}u + (v - {n0}u);
    }}
    return {s2}u + (v - {m01}u);
}}
fn p{k}_xs(i: u32) -> vec4<u32> {{
    if (i < {e0}u) {{
        return p{k}_XS[i - {s0}u];
    }}
    if (i < {e1}u) {{
        return p{k}_XS[i - {s1}u + {n0}u];
    }}
    return p{k}_XS[min(i - {s2}u + {m01}u, {last}u)];
}}
",
                p = k - 1,
                e2 = s2 + n2,
                last = len.max(1) - 1,
            ));
        }
    }
    let Some(wgs) = wg_size else {
        return bad("no entry point");
    };
    let nc = n as u32 - 1;
    // The entry point: the parts in grid order.
    let mut entry = format!(
        "@compute @workgroup_size({wgs})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg_all: vec3<u32>) {{
    let g = wg_all.x;
    if (g == 0u && lid < NC) {{
        atomicStore(&JC[JP.zero * NC + lid], 0u);
    }}
"
    );
    let mut first = 0u32;
    for (k, &gk) in groups.iter().enumerate() {
        entry.push_str(&format!("    if (g < {}u) {{\n", first + gk));
        if k > 0 {
            let p = k - 1;
            entry.push_str(&format!(
                "        // Every workgroup of part {p} has stored its output.
        loop {{
            if (lid == 0u) {{
                jdone = u32(atomicLoad(&JC[JP.slot * NC + {p}u]) >= {}u);
            }}
            if (workgroupUniformLoad(&jdone) != 0u) {{
                break;
            }}
        }}
        for (var i = lid; i < p{k}_NXS; i += {wgs}u) {{
            let w = p{k}_xsrc(i) * 4u;
            p{k}_XS[i] = vec4<u32>(atomicLoad(&p{p}_R[w]), atomicLoad(&p{p}_R[w + 1u]), atomicLoad(&p{p}_R[w + 2u]), atomicLoad(&p{p}_R[w + 3u]));
        }}
        workgroupBarrier();
",
                groups[p]
            ));
        }
        entry.push_str(&format!(
            "        p{k}_main(lid, vec3<u32>(g - {first}u, wg_all.y, wg_all.z));\n"
        ));
        if k + 1 < n {
            entry.push_str(&format!(
                "        // Release: this workgroup's output before its arrival.
        storageBarrier();
        if (lid == 0u) {{
            atomicAdd(&JC[JP.slot * NC + {k}u], 1u);
        }}
"
            ));
        }
        entry.push_str("        return;\n    }\n");
        first += gk;
    }
    entry.push_str("}\n");
    Ok(format!(
        "{}
// Consecutive decode mat-vecs in one dispatch (KernelKey::MatVecJoin).
{body}
struct JoinParams {{
    own: array<vec4<u32>, 4>,
    slot: u32,
    zero: u32,
    pad0: u32,
    pad1: u32,
}}
@group(0) @binding({base}) var<storage, read_write> JC: array<atomic<u32>>;
@group(0) @binding({}) var<uniform> JP: JoinParams;
const NC: u32 = {nc}u;
var<workgroup> jdone: u32;
{entry}",
        head.join("\n"),
        base + 1,
    ))
}

/// Whether a top-level WGSL keyword starts a directive (`enable`, `requires`, `diagnostic`).
fn is_directive(kw: &str) -> bool {
    matches!(kw, "enable" | "requires" | "diagnostic")
}

/// The directives of `items` added to `head`, each once (a module composed of several
/// kernel texts starts with all of theirs).
fn add_directives(items: &[WgslItem], head: &mut Vec<String>) {
    for it in items.iter().filter(|it| is_directive(it.kw)) {
        let code = it.text[skip_blank(it.text, 0)..].trim_end().to_string();
        if !head.contains(&code) {
            head.push(code);
        }
    }
}

/// A mat-vec kernel's `items` as a part of a composed module (the joint kernels): its
/// directives added to `head` ([`add_directives`]), its other top-level items but those
/// named in `drop` with every top-level name prefixed `prefix`, and its entry point
/// (`@compute @workgroup_size(N)`, the mat-vec's parameters) made the function
/// `{prefix}main(lid: u32, wg: vec3<u32>)`. Returns the text, N and the kernel's
/// top-level names; Err says what the entry point lacks.
fn prefixed_part<'a>(
    items: &[WgslItem<'a>],
    prefix: &str,
    drop: &[&str],
    head: &mut Vec<String>,
) -> std::result::Result<(String, u32, Vec<&'a str>), String> {
    add_directives(items, head);
    let map: HashMap<&str, String> = items
        .iter()
        .filter(|it| !it.name.is_empty())
        .map(|it| (it.name, format!("{prefix}{}", it.name)))
        .collect();
    let size_re =
        regex::Regex::new(r"@compute @workgroup_size\((\d+)\)").map_err(|e| e.to_string())?;
    let entry_params =
        "fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>)";
    let mut size = 0;
    let mut part = String::new();
    for it in items
        .iter()
        .filter(|it| !is_directive(it.kw) && !drop.contains(&it.name))
    {
        let text = if it.kw == "fn" && it.name == "main" {
            let sizes: Vec<u32> = size_re
                .captures_iter(it.text)
                .filter_map(|c| c[1].parse().ok())
                .collect();
            let [n] = sizes[..] else {
                return Err("an entry point without one workgroup size".into());
            };
            if it.text.matches(entry_params).count() != 1 {
                return Err("an entry point that is not the mat-vec form".into());
            }
            size = n;
            size_re
                .replace(it.text, "")
                .replace(entry_params, "fn main(lid: u32, wg: vec3<u32>)")
        } else {
            it.text.to_string()
        };
        part.push_str(&rename_idents(&text, &map));
    }
    if size == 0 {
        return Err("no entry point".into());
    }
    Ok((part, size, map.into_keys().collect()))
}

/// `text` with every `@binding(b)` made `@binding(b + by)`, and its highest binding before
/// the shift (0 for none).
fn shift_bindings(text: &str, by: u32) -> Result<(String, u32)> {
    let binding = regex::Regex::new(r"@binding\((\d+)\)")
        .map_err(|e| Error::msg(format!("internal: {e}")))?;
    let top = binding
        .captures_iter(text)
        .filter_map(|c| c[1].parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let out = binding
        .replace_all(text, |c: &regex::Captures| {
            let b: u32 = c[1].parse().unwrap_or(0);
            format!("@binding({})", b + by)
        })
        .into_owned();
    Ok((out, top))
}

/// A top-level item of a WGSL module: its text (leading comments and attributes included),
/// keyword (`fn`, `struct`, `var`, `const`, `override`, `alias`, `enable`, ...; empty for
/// a stray `;`) and declared name.
struct WgslItem<'a> {
    text: &'a str,
    kw: &'a str,
    name: &'a str,
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The identifier starting at byte `i` of `s` (empty if none).
fn ident_at(s: &str, i: usize) -> &str {
    let b = s.as_bytes();
    let mut j = i;
    while j < b.len() && is_ident(b[j]) {
        j += 1;
    }
    &s[i..j]
}

/// Index of the first byte of `s` from `i` that is neither white space nor inside a comment.
fn skip_blank(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = s[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
        } else {
            break;
        }
    }
    i
}

/// The index just past the bracket that closes the one opening at byte `open` of `s`
/// (`(`, `[`, `{` or `<`, comments skipped).
fn close_of(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let (o, c) = match b.get(open)? {
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        b'{' => (b'{', b'}'),
        b'<' => (b'<', b'>'),
        _ => return None,
    };
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        let j = skip_blank(s, i);
        if j != i {
            i = j;
            continue;
        }
        if b[i] == o {
            depth += 1;
        } else if b[i] == c {
            depth -= 1;
            if depth == 0 {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

/// The top-level items of `src`: each ends with a `;` or with the `}` that closes a
/// declaration's body at depth 0.
fn wgsl_items(src: &str) -> Result<Vec<WgslItem<'_>>> {
    let b = src.as_bytes();
    let bad = || Error::msg("internal: unbalanced WGSL kernel text");
    let mut items = Vec::new();
    let mut start = 0;
    loop {
        // Keyword: past comments and attributes (`@name` or `@name(...)`).
        let mut i = skip_blank(src, start);
        if i >= b.len() {
            break;
        }
        while b.get(i) == Some(&b'@') {
            i += 1 + ident_at(src, i + 1).len();
            let j = skip_blank(src, i);
            if b.get(j) == Some(&b'(') {
                i = close_of(src, j).ok_or_else(bad)?;
            }
            i = skip_blank(src, i);
        }
        let kw = ident_at(src, i);
        i += kw.len();
        i = skip_blank(src, i);
        if kw == "var" && b.get(i) == Some(&b'<') {
            i = skip_blank(src, close_of(src, i).ok_or_else(bad)?);
        }
        let name = if matches!(kw, "fn" | "struct" | "var" | "const" | "override" | "alias") {
            ident_at(src, i)
        } else {
            ""
        };
        // The end: a `;` at depth 0, or the body's `}` of a fn / struct.
        let mut end = None;
        while i < b.len() {
            let j = skip_blank(src, i);
            if j != i {
                i = j;
                continue;
            }
            match b[i] {
                b';' => {
                    end = Some(i + 1);
                    break;
                }
                b'(' | b'[' => i = close_of(src, i).ok_or_else(bad)?,
                b'{' => {
                    end = Some(close_of(src, i).ok_or_else(bad)?);
                    break;
                }
                _ => i += 1,
            }
        }
        let end = end.ok_or_else(bad)?;
        items.push(WgslItem {
            text: &src[start..end],
            kw,
            name,
        });
        start = end;
    }
    Ok(items)
}

/// `src` with every identifier in `map` replaced (member names after a `.` kept).
fn rename_idents(src: &str, map: &HashMap<&str, String>) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len() + src.len() / 8);
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if (b[i].is_ascii_alphabetic() || b[i] == b'_') && (i == 0 || !is_ident(b[i - 1])) {
            let id = ident_at(src, i);
            let member = src[..i].trim_end().ends_with('.');
            if let Some(new) = map.get(id).filter(|_| !member) {
                out.push_str(&src[last..i]);
                out.push_str(new);
                last = i + id.len();
            }
            i += id.len();
        } else {
            i += 1;
        }
    }
    out.push_str(&src[last..]);
    out
}

/// WGSL of [`KernelKey::MatVecQ8Multi`]: the [`KernelKey::MatVecQ8`] kernel of every part,
/// as [`Kernels::source`] builds it (128-bit loads included), made one module. Each part's
/// declarations get the suffix `_mN` (its weights `W_mN` at binding 0 for part 0, 3 + N
/// after), its parameters are block N of the uniform array at binding 3, the input `X`
/// and output `Y` are shared, and its entry point's body runs in the workgroups of its
/// range ([`multi_layout`]) with `workgroup_id.x` made its own row-group index. The per-row
/// code is the part's kernel unchanged, so each row's value is the separate dispatch's bit
/// for bit.
fn matvec_q8_multi_source(ctx: &GpuContext, parts: &[MultiPart], order: u32) -> Result<String> {
    if parts.is_empty() || parts.len() > MULTI_MAX || order > 1 {
        return Err(Error::msg(format!(
            "multi mat-vec of {} parts (1 to {MULTI_MAX}), order {order}",
            parts.len()
        )));
    }
    let (lay, total) = multi_layout(parts, order);
    let bad = |what: &str| Error::msg(format!("multi mat-vec: {what} of the integer kernel"));
    let mut head = String::new(); // enable directives, Params, X, Y
    let mut decls = String::new();
    let mut entry: Option<(String, String, String)> = None; // attributes, parameters, wg name
    let mut branches = String::new();
    let mut shared: HashMap<String, String> = HashMap::new();
    for (k, (p, &(_, per, off))) in parts.iter().zip(&lay).enumerate() {
        let src = Kernels::source(ctx, &p.key())?;
        let items = wgsl_items(&src)?;
        let mut map: HashMap<&str, String> = HashMap::new();
        for it in &items {
            if !it.name.is_empty() && !matches!(it.name, "main" | "X" | "Y" | "Params" | "P") {
                map.insert(it.name, format!("{}_m{k}", it.name));
            }
        }
        map.insert("P", format!("PM.p[{k}u]"));
        for it in &items {
            match (it.kw, it.name) {
                ("enable" | "requires" | "diagnostic", _) | (_, "X" | "Y" | "Params") => {
                    // Shared: the same text in every part.
                    // Compared without the comments before it (128-bit loads rewrite them).
                    let code = it.text[skip_blank(it.text, 0)..].trim_end();
                    let key = if it.name.is_empty() { code } else { it.name };
                    match shared.get(key) {
                        Some(t) if t != code => return Err(bad(&format!("differing `{key}`"))),
                        Some(_) => {}
                        None => {
                            shared.insert(key.to_string(), code.to_string());
                            head.push_str(code);
                            head.push('\n');
                        }
                    }
                }
                ("var", "P") => {}
                ("var", "W") => {
                    let t = rename_idents(it.text, &map);
                    let bind = if k == 0 { 0 } else { 3 + k };
                    if !t.contains("@binding(0)") {
                        return Err(bad("weights not at binding 0"));
                    }
                    decls.push_str(&t.replacen("@binding(0)", &format!("@binding({bind})"), 1));
                }
                ("var", _) if it.text.contains("@binding") => {
                    return Err(bad(&format!("binding `{}`", it.name)));
                }
                ("fn", "main") => {
                    let t = it.text;
                    let open = t.find("fn main").ok_or_else(|| bad("entry point"))? + 7;
                    let open = skip_blank(t, open);
                    let pend = close_of(t, open).ok_or_else(|| bad("entry parameters"))?;
                    let params = t[open + 1..pend - 1].trim().to_string();
                    let bopen = t[pend..].find('{').ok_or_else(|| bad("entry body"))? + pend;
                    let body = rename_idents(&t[bopen..], &map);
                    let attrs = t[..t.find("fn main").unwrap_or(0)].trim().to_string();
                    if !attrs.contains("@compute") {
                        return Err(bad("entry point without @compute"));
                    }
                    let attrs = attrs[attrs.find("@compute").unwrap_or(0)..].to_string();
                    // The workgroup index parameter; other built-ins that depend on it
                    // (global ids, workgroup counts) are not remapped.
                    let mut wg = None;
                    for a in params.split(',') {
                        let a = a.trim();
                        if a.contains("global_invocation_id") || a.contains("num_workgroups") {
                            return Err(bad("a grid-wide built-in"));
                        }
                        if a.contains("@builtin(workgroup_id)") {
                            let n = a["@builtin(workgroup_id)".len()..].trim();
                            wg = Some(ident_at(n, 0).to_string());
                        }
                    }
                    let wg = wg.ok_or_else(|| bad("no workgroup_id"))?;
                    match &entry {
                        Some(e) if e.0 != attrs || e.1 != params => {
                            return Err(bad("differing entry points"))
                        }
                        Some(_) => {}
                        None => entry = Some((attrs, params, wg.clone())),
                    }
                    let cond = if order == 1 {
                        format!("pos_m < {}u", off + per)
                    } else {
                        format!("wx_m < {}u", off + per)
                    };
                    let idx = if order == 1 {
                        format!("per_m * {per}u + (pos_m - {off}u)")
                    } else {
                        format!("wx_m - {off}u")
                    };
                    branches.push_str(&format!(
                        "    {}if ({cond}) {{\n        let l_m = {idx};\n        if (l_m < {}u) {{\n            let {wg} = vec3<u32>(l_m, wg_m.y, wg_m.z);\n            {body}\n        }}\n    }}",
                        if k == 0 { "" } else { " else " },
                        p.wgs
                    ));
                }
                _ => decls.push_str(&rename_idents(it.text, &map)),
            }
        }
    }
    let (attrs, params, wg) = entry.ok_or_else(|| bad("no entry point"))?;
    let len = lay.first().map_or(1, |l| l.0);
    Ok(format!(
        "{head}
struct ParamsMulti {{
    p: array<Params, {n}>,
}}
@group(0) @binding(3) var<uniform> PM: ParamsMulti;
{decls}

// {n} mat-vecs in one dispatch of {total} workgroups (order {order}).
{attrs}
fn main({params}) {{
    let wg_m = {wg};
    let wx_m = wg_m.x;
    let per_m = wx_m / {len}u;
    let pos_m = wx_m % {len}u;
{branches}
}}
",
        n = parts.len()
    ))
}

/// `src` with every access of the f32 storage array `name` through atomics of its bits
/// (`name` must then be declared `array<atomic<u32>>`): a store `name[i] = v;` becomes
/// `atomicStore(&name[i], bitcast<u32>(v));` and every other use `name[i]` becomes
/// `bitcast<f32>(atomicLoad(&name[i]))` (device scope, past the H100's non-coherent L1, as
/// [`Tune::lw_atomic`] found for the epilogues' hand-offs). Comments (`//` and `/* */`) are
/// kept as they are; a compound assignment (`name[i] += v`) or a store without its `;` is refused.
pub fn atomic_f32_access(src: &str, name: &str) -> Result<String> {
    atomic_access(src, name, true)
}

/// `src` whose storage array `name`, declared once as `var<storage, read_write> name:
/// array<f32>;` (`f32`) or `array<u32>;`, is declared `array<atomic<u32>>` with every access
/// atomic ([`atomic_access`]); None without that declaration once.
fn atomic_array(src: &str, name: &str, f32: bool) -> Result<Option<String>> {
    let elem = if f32 { "f32" } else { "u32" };
    let decl = format!("var<storage, read_write> {name}: array<{elem}>;");
    if src.matches(&decl).count() != 1 {
        return Ok(None);
    }
    let src = src.replace(
        &decl,
        &format!("var<storage, read_write> {name}: array<atomic<u32>>;"),
    );
    atomic_access(&src, name, f32).map(Some)
}

/// [`atomic_f32_access`] for an array of f32 bits (`f32`) or of u32 words (no bitcasts).
fn atomic_access(src: &str, name: &str, f32: bool) -> Result<String> {
    let b = src.as_bytes();
    let bad = |what: &str| {
        Err(Error::msg(format!(
            "internal: atomic accesses of {name}: {what}"
        )))
    };
    let mut out = String::with_capacity(src.len() + src.len() / 4);
    let mut last = 0;
    loop {
        let (i, open, close) = match next_index(src, name, last) {
            Ok(Some(at)) => at,
            Ok(None) => break,
            Err(_) => return bad("an unbalanced index"),
        };
        let index = atomic_access(&src[open + 1..close - 1], name, f32)?;
        let mut j = close;
        while b.get(j) == Some(&b' ') {
            j += 1;
        }
        out.push_str(&src[last..i]);
        let op = |k: usize| b.get(j + k).copied();
        if matches!(
            op(0),
            Some(b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^')
        ) && op(1) == Some(b'=')
        {
            return bad("a compound assignment");
        }
        if op(0) == Some(b'=') && op(1) != Some(b'=') {
            // A store: its value runs to the `;` at depth 0.
            let mut depth = 0i32;
            let mut k = j + 1;
            while k < b.len() && !(depth == 0 && b[k] == b';') {
                match b[k] {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth -= 1,
                    _ => {}
                }
                k += 1;
            }
            if k >= b.len() {
                return bad("a store without its ';'");
            }
            let value = atomic_access(src[j + 1..k].trim(), name, f32)?;
            out.push_str(&if f32 {
                format!("atomicStore(&{name}[{index}], bitcast<u32>({value}));")
            } else {
                format!("atomicStore(&{name}[{index}], {value});")
            });
            last = k + 1;
        } else {
            out.push_str(&if f32 {
                format!("bitcast<f32>(atomicLoad(&{name}[{index}]))")
            } else {
                format!("atomicLoad(&{name}[{index}])")
            });
            last = close;
        }
    }
    out.push_str(&src[last..]);
    Ok(out)
}
