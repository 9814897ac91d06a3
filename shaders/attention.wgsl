// Causal attention over the KV cache, one workgroup per (head, token); each token attends to its own
// sequence's cache up to its position: scores into shared
// memory, softmax, weighted sum of V. Grouped-query heads share their KV head.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    ctx: u32,
    n_tok: u32,
    q_ld: u32,
    kv_ld: u32,
    o_ld: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> KC: array<f32>;
@group(0) @binding(2) var<storage, read> VC: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;

const CTX: u32 = $CTXu;
var<workgroup> S: array<f32, CTX>;
var<workgroup> red: array<f32, 256>;

// Probabilities are rounded to f16 before the weighted sum of V, as llama.cpp's CPU backend does.
fn r16(x: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let tok = wg.y;
    let n = TI[tok].y + 1u;
    let cb = TI[tok].x * P.ctx * P.kv_ld;
    let kvh = h / (P.n_head / P.n_kv);
    let qb = tok * P.q_ld + h * P.hd;
    let kb = kvh * P.hd;
    var mx = -3.0e38;
    for (var p = lid; p < n; p += 256u) {
        let ko = cb + p * P.kv_ld + kb;
        var s = 0.0;
        for (var d = 0u; d < P.hd; d += 4u) {
            let q4 = vec4<f32>(Q[qb + d], Q[qb + d + 1u], Q[qb + d + 2u], Q[qb + d + 3u]);
            let k4 = vec4<f32>(KC[ko + d], KC[ko + d + 1u], KC[ko + d + 2u], KC[ko + d + 3u]);
            s += dot(q4, k4);
        }
        s *= P.scale;
        S[p] = s;
        mx = max(mx, s);
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var p = lid; p < n; p += 256u) {
        let e = exp(S[p] - m);
        S[p] = e;
        sum += e;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    // 256 threads: hd columns × (256 / hd) position groups, combined through shared memory.
    let groups = max(256u / P.hd, 1u);
    let d = lid % P.hd;
    let gi = lid / P.hd;
    var acc = 0.0;
    if (gi < groups) {
        for (var p = gi; p < n; p += groups) {
            acc += r16(S[p] * inv) * VC[cb + p * P.kv_ld + kb + d];
        }
    }
    workgroupBarrier();
    red[lid] = acc;
    workgroupBarrier();
    if (lid < P.hd) {
        var t = 0.0;
        for (var g = 0u; g < groups; g++) {
            t += red[g * P.hd + lid];
        }
        O[tok * P.o_ld + h * P.hd + lid] = t;
    }
}
