// Decode attention by output segment (`KernelKey::AttnDecodeS`, `Tune::attn_seg`): one
// workgroup per (256-value segment of the attention output, token), i.e. GH = 256 / hd heads,
// hd threads each, for batches whose tokens all belong to different sequences (one new
// position each). No split and no hand-off between workgroups: the workgroup scores all of
// its heads' visible positions, weighs their V rows and rounds the 256 values for `wo` itself
// with `shaders/actq.wgsl`'s code (`actq_main`, appended by the builder in
// src/gpu/kernels.rs), so the attention is one dispatch with no counter, no partial results
// and no combine.
//
// Same operations as `shaders/attn_decode.wgsl` (RoPE of the new Q and K in llama's NORM mode
// with the f64 cos/sin table, Q/K/V rounded to f16 as llama.cpp's f16 Q and KV cache, the new
// K and V stored by the first head of each KV group, scores scaled, softmax with the head's
// maximum, probabilities rounded to f16 before they weigh V), with sums in another order
// (per-head threads instead of one 256-thread workgroup): outputs agree with that kernel to
// rounding, not bit for bit.
//
// Thread j of a head's hd threads scores positions lo + j, lo + j + hd, …; for V the head's
// threads are SL = 4 slots of hd / 4 threads (one vec4 of the row each), slot s weighing
// positions lo + s, lo + s + 4, … with 16 rows loaded at a time.
// attn_decode.wgsl's `Params` (the same uniform block; the builder inserts it).
$PARAMS@group(0) @binding(0) var<storage, read> QKV: array<f32>;
@group(0) @binding(1) var<storage, read_write> KC: array<$KV4>;
@group(0) @binding(2) var<storage, read_write> VC: array<$KV4>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> CS: array<vec2<f32>>;

const CTX: u32 = $CTXu;
// Head size / 4, a constant so that the loops over a row unroll (all loads in flight).
const HD4: u32 = $HD4u;
// Heads per workgroup, threads per head, V slots per head.
const GH: u32 = 64u / HD4;
const TH: u32 = 4u * HD4;
const SL: u32 = 4u;
// V rows loaded at a time per thread.
const VB: u32 = 16u;
var<workgroup> S: array<f32, $SCTXu>;
var<workgroup> red: array<f32, 256>;
var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> ks: array<vec4<f32>, 64>;
var<workgroup> vs: array<vec4<f32>, 64>;
var<workgroup> vred: array<vec4<f32>, 256>;
var<workgroup> aout: array<f32, 256>;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in src/gpu/kernels.rs).
$R16

// Maximum (`is_max`) or sum of `x` over the TH threads of thread `lid`'s head.
fn head_reduce(x: f32, lid: u32, is_max: bool) -> f32 {
$HEAD_REDUCE}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tok = wg.y;
    let seq = TI[tok].x;
    let pos = TI[tok].y;
    let n = pos + 1u;
    let lo = select(0u, n - min(n, P.window), P.window > 0u);
    let hl = lid / TH;
    let j = lid % TH;
    let h = wg.x * GH + hl;
    let grp = P.n_head / P.n_kv;
    let kvh = h / grp;
    let row = tok * P.q_ld;
    let kvl4 = P.kv_ld / 4u;
    let cb4 = seq * P.ctx * kvl4;
    let kb4 = kvh * HD4;
    let hq = hl * HD4;
    let half = 2u * HD4;
    // The new token's Q, K (RoPE) and V, f16-rounded into qs / ks / vs at the head's rows:
    // attn_decode.wgsl's NEW_TOKEN block with `j` for `lid` and row offset `hq` (the builder).
$NEW_TOKEN    workgroupBarrier();
    if (h % grp == 0u && j < HD4) {
        let so = cb4 + pos * kvl4 + kb4 + j;
        kc_st(so, ks[hq + j]);
        vc_st(so, vs[hq + j]);
    }
    // Scores: the K row into registers (the new one from ks), then one dot loop.
    let sb = hl * CTX;
    var mx = -3.0e38;
    for (var p = lo + j; p < n; p += TH) {
        var kv: array<vec4<f32>, HD4>;
        if (p == pos) {
            for (var d = 0u; d < HD4; d++) {
                kv[d] = ks[hq + d];
            }
        } else {
            let ko = cb4 + p * kvl4 + kb4;
            for (var d = 0u; d < HD4; d++) {
                kv[d] = kc_ld(ko + d);
            }
        }
        var s = 0.0;
        for (var d = 0u; d < HD4; d++) {
            s += dot(qs[hq + d], kv[d]);
        }
        s *= P.scale;
        S[sb + p - lo] = s;
        mx = max(mx, s);
    }
    let m = head_reduce(mx, lid, true);
    var sum = 0.0;
    for (var p = j; p < n - lo; p += TH) {
        let e = exp(S[sb + p] - m);
        S[sb + p] = e;
        sum += e;
    }
    let tot = head_reduce(sum, lid, false);
    let inv = 1.0 / tot;
    // V: slot s of the head's SL, one vec4 of the row per thread, VB rows at a time.
    let d4 = j % HD4;
    let slot = j / HD4;
    let vb = cb4 + kb4 + d4;
    var acc = vec4<f32>(0.0);
    var p = lo + slot;
    for (; p + (VB - 1u) * SL < n; p += VB * SL) {
        var v: array<vec4<f32>, VB>;
        for (var i = 0u; i < VB; i++) {
            let q = p + i * SL;
            if (q == pos) {
                v[i] = vs[hq + d4];
            } else {
                v[i] = vc_ld(vb + q * kvl4);
            }
        }
        for (var i = 0u; i < VB; i++) {
            acc += r16(S[sb + p + i * SL - lo] * inv) * v[i];
        }
    }
    for (; p < n; p += SL) {
        var v = vec4<f32>(0.0);
        if (p == pos) {
            v = vs[hq + d4];
        } else {
            v = vc_ld(vb + p * kvl4);
        }
        acc += r16(S[sb + p - lo] * inv) * v;
    }
    vred[lid] = acc;
    workgroupBarrier();
    if (j < HD4) {
        var t = vec4<f32>(0.0);
        for (var s = 0u; s < SL; s++) {
            t += vred[hl * TH + s * HD4 + j];
        }
        let o = hl * TH + 4u * j;
        aout[o] = t.x;
        aout[o + 1u] = t.y;
        aout[o + 2u] = t.z;
        aout[o + 3u] = t.w;
    }
    workgroupBarrier();
    actq_main(lid, vec3<u32>(wg.x, tok, 0u));
}
