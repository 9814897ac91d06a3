// RoPE (adjacent pairs, llama's NORM mode) on Q in place, and K/V of each token stored into
// the layer's KV cache at its (sequence, position) slot, a pair of values per store (f16 halves
// of one word, or two f32 with GGUFQ_KV_F32=1: `kv_storage` in src/gpu/kernels.rs). cos/sin
// come from a table computed on the CPU in f64.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    ctx: u32,
    n_tok: u32,
    q_ld: u32,
    kv_ld: u32,
    n_rot: u32,
}
@group(0) @binding(0) var<storage, read_write> QKV: array<f32>;
@group(0) @binding(1) var<storage, read_write> KC: array<$KV2>;
@group(0) @binding(2) var<storage, read_write> VC: array<$KV2>;
@group(0) @binding(3) var<storage, read> CS: array<vec2<f32>>;
@group(0) @binding(4) var<uniform> P: Params;
// Per token: (sequence, position).
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in
// src/gpu/kernels.rs), as llama.cpp's f16 KV cache and f16 Q in attention round them.
$R16

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let tok = gid.y;
    let half = P.hd / 2u;
    let i = gid.x;
    let nq = P.n_head * half;
    let nk = P.n_kv * half;
    let total = nq + 2u * nk;
    if (i >= total || tok >= P.n_tok) {
        return;
    }
    let pos = TI[tok].y;
    let slot = TI[tok].x * P.ctx + pos;
    let row = tok * P.q_ld;
    if (i < nq + nk) {
        var h: u32;
        var k: u32;
        var src: u32;
        if (i < nq) {
            h = i / half;
            k = i % half;
            src = row + h * P.hd + 2u * k;
        } else {
            h = (i - nq) / half;
            k = (i - nq) % half;
            src = row + P.n_head * P.hd + h * P.hd + 2u * k;
        }
        var x0 = QKV[src];
        var x1 = QKV[src + 1u];
        if (2u * k < P.n_rot) {
            let cs = CS[pos * (P.n_rot / 2u) + k];
            let y0 = x0 * cs.x - x1 * cs.y;
            let y1 = x0 * cs.y + x1 * cs.x;
            x0 = y0;
            x1 = y1;
        }
        if (i < nq) {
            QKV[src] = r16(x0);
            QKV[src + 1u] = r16(x1);
        } else {
            let dst = slot * P.kv_ld + h * P.hd + 2u * k;
            kc_st2(dst / 2u, r16(x0), r16(x1));
        }
    } else {
        let m = i - nq - nk;
        let src = row + (P.n_head + P.n_kv) * P.hd + 2u * m;
        let dst = slot * P.kv_ld + 2u * m;
        vc_st2(dst / 2u, r16(QKV[src]), r16(QKV[src + 1u]));
    }
}
