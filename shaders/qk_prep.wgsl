// Per-architecture preparation of Q, K and V before the RoPE/KV-store and attention kernels
// (qwen2, qwen3, gemma3; never recorded for llama and mistral): per token and head slot
// (Q heads, then K heads, then V heads), in the CPU backend's order:
//   bias add (qwen2: attn_{q,k,v}.bias), per-head RMSNorm of Q and K (qwen3, gemma3:
//   attn_{q,k}_norm), RoPE of the first n_rot dimensions (NeoX halves or adjacent pairs, the
//   layer's own cos/sin table: gemma3's sliding-window layers have their own base), and Q
//   times `q_scale` (gemma3 scales Q before the f16 KV product).
// The result stays f32 in QKV; the next kernel rounds Q, K and V to f16 (with n_rot = 0).
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    ctx: u32,
    n_tok: u32,
    q_ld: u32,
    kv_ld: u32,
    n_rot: u32,
    // bit 0: per-head norm of Q and K; bit 1: biases; bit 2: NeoX pairs.
    flags: u32,
    eps: f32,
    q_scale: f32,
    pad: u32,
}
@group(0) @binding(0) var<storage, read_write> QKV: array<f32>;
@group(0) @binding(1) var<storage, read> CS: array<vec2<f32>>;
// [q_norm (hd) | k_norm (hd) | bias (q_ld)] of the layer.
@group(0) @binding(2) var<storage, read> AUX: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;
@group(0) @binding(4) var<storage, read> TI: array<vec2<u32>>;

var<workgroup> red: array<f32, 256>;
var<workgroup> xs: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let slot = wg.x;
    let tok = wg.y;
    if (tok >= P.n_tok) {
        return;
    }
    let is_q = slot < P.n_head;
    let is_k = !is_q && slot < P.n_head + P.n_kv;
    let base = tok * P.q_ld + slot * P.hd;
    let on = lid < P.hd;
    var v = 0.0;
    if (on) {
        v = QKV[base + lid];
        if ((P.flags & 2u) != 0u) {
            v = v + AUX[2u * P.hd + slot * P.hd + lid];
        }
    }
    if (!is_q && !is_k) {
        // V: bias only.
        if (on) {
            QKV[base + lid] = v;
        }
        return;
    }
    if ((P.flags & 1u) != 0u) {
        red[lid] = v * v;
        workgroupBarrier();
        for (var k = 128u; k > 0u; k >>= 1u) {
            if (lid < k) {
                red[lid] += red[lid + k];
            }
            workgroupBarrier();
        }
        let inv = 1.0 / sqrt(red[0] / f32(P.hd) + P.eps);
        if (on) {
            v = v * inv * AUX[select(P.hd, 0u, is_q) + lid];
        }
    }
    xs[lid] = v;
    workgroupBarrier();
    if (on && lid < P.n_rot) {
        let half = P.n_rot / 2u;
        let pos = TI[tok].y;
        var i: u32;
        var a: u32;
        var b: u32;
        if ((P.flags & 4u) != 0u) {
            i = lid % half;
            a = i;
            b = i + half;
        } else {
            i = lid / 2u;
            a = 2u * i;
            b = a + 1u;
        }
        let cs = CS[pos * half + i];
        let x0 = xs[a];
        let x1 = xs[b];
        if (lid == a) {
            v = x0 * cs.x - x1 * cs.y;
        } else {
            v = x0 * cs.y + x1 * cs.x;
        }
    }
    if (on) {
        if (is_q) {
            v = v * P.q_scale;
        }
        QKV[base + lid] = v;
    }
}
