// Activation rounding: Y[t][i] = the value llama.cpp's quantized activation represents for
// X[t][i], exactly as `model::cpu::ActQuant::apply` computes it on the CPU, so that GPU mat-vec
// and mat-mat kernels see the same inputs as ggml's CPU `vec_dot` (Q8_0 / Q8_1 blocks of 32
// with an f16 scale, Q8_K blocks of 256 with an f32 scale, or plain f16 / bf16 rounding).
//
// One workgroup rounds 4096 consecutive values of one token's row (wg.x: 4096-value chunk,
// wg.y: token); block maxima are reduced in workgroup memory. Divisions are exact long divisions
// (`div_rn`), so the scales are the correctly rounded quotients the CPU computes.
//
// With `q8_base` (pad0) ≠ 0 the Q8 kinds also write the block's int8 quants and scales, which
// the integer decode mat-vec reads: value o's quant is byte o of the words from q8_base
// (4 per word), the scale of its 32-value unit is word q8_base + q8_base / 4 + o / 32 (for
// Q8_K the block scale repeated per unit).

struct Params {
    k: u32,      // row length (values rounded per token)
    ld: u32,     // row stride of X and Y (f32 values)
    x_off: u32,  // first value of token 0 (f32 values)
    n_tok: u32,
    kind: u32,   // 1 f16, 2 bf16, 3 Q8_0/Q8_1 (32-blocks), 4 Q8_K (256-blocks)
    q8_base: u32, // 0, or the word where the packed quants begin (multiple of 64)
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
    pad5: u32,
    pad6: u32,
}

@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<uniform> P: Params;

const CHUNK: u32 = 4096u;  // values per workgroup (16 per thread)

var<workgroup> red: array<f32, 256>;

// a / b correctly rounded (ties to even) for positive normal a, b with a normal quotient, by
// long division of the 24-bit significands: GPU `/` may be approximate and `fma` unfused
// (lavapipe), so neither gives the CPU's IEEE quotient. Other inputs fall back to `/`.
fn div_rn(a: f32, b: f32) -> f32 {
    let ba = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let ea = i32(ba >> 23u) - 127;
    let eb = i32(bb >> 23u) - 127;
    if (ea <= -127 || eb <= -127 || ea >= 128 || eb >= 128 || (ba >> 31u) != 0u || (bb >> 31u) != 0u) {
        return a / b;
    }
    let ma = (ba & 0x7fffffu) | 0x800000u;
    let mb = (bb & 0x7fffffu) | 0x800000u;
    var e = ea - eb;
    var r = ma;
    if (ma < mb) {
        r = ma << 1u;
        e -= 1;
    }
    // r in [mb, 2 mb): 25 quotient bits (24 significand bits and a guard bit).
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if (r >= mb) {
            r -= mb;
            q |= 1u;
        }
        r = r << 1u;
    }
    var m = q >> 1u;
    if ((q & 1u) == 1u && (r != 0u || (m & 1u) == 1u)) {
        m += 1u;
    }
    if (m == 0x1000000u) {
        m = m >> 1u;
        e += 1;
    }
    if (e <= -127 || e >= 128) {
        return a / b;
    }
    return bitcast<f32>((u32(e + 127) << 23u) | (m & 0x7fffffu));
}

// Nearest f16 value (ties to even, f16 subnormals, overflow to ±inf), as f32.
fn round_f16(x: f32) -> f32 {
    let a = abs(x);
    if (!(a == a)) {
        return x;
    }
    if (a >= 65520.0) {
        return select(bitcast<f32>(0x7f800000u), bitcast<f32>(0xff800000u), x < 0.0);
    }
    let e = max(i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127, -14);
    let up = bitcast<f32>(u32(10 - e + 127) << 23u);   // 2^(10-e): a * up is exact
    let ulp = bitcast<f32>(u32(e - 10 + 127) << 23u);  // 2^(e-10)
    let r = round(a * up) * ulp;
    return select(r, -r, x < 0.0);
}

// Nearest bf16 value (ties to even), as f32.
fn round_bf16(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return x;
    }
    return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}

// Each thread rounds 16 consecutive values (half a Q8_0 block, 1/16 of a Q8_K block); a block's
// maximum is the maximum of its threads' maxima (one barrier).
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let i = wg.x * CHUNK + 16u * lid;
    let t = wg.y;
    // Rows are whole 16-value groups for the Q8 kinds (whole blocks); f16 / bf16 rows may end
    // inside a group: those values are checked one by one.
    let live = i < P.k && t < P.n_tok;
    let full = i + 16u <= P.k && t < P.n_tok;
    let o = P.x_off + t * P.ld + i;
    var v: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j++) {
        var w = vec4<f32>(0.0);
        if (full) {
            w = vec4<f32>(X[o + 4u * j], X[o + 4u * j + 1u], X[o + 4u * j + 2u], X[o + 4u * j + 3u]);
        } else if (live) {
            for (var e = 0u; e < 4u; e++) {
                if (i + 4u * j + e < P.k) {
                    w[e] = X[o + 4u * j + e];
                }
            }
        }
        v[j] = w;
    }
    if (P.kind <= 2u) {
        for (var j = 0u; j < 4u; j++) {
            let r = round4(v[j]);
            for (var e = 0u; e < 4u; e++) {
                if (live && i + 4u * j + e < P.k) {
                    Y[o + 4u * j + e] = bitcast<u32>(r[e]);
                }
            }
        }
        return;
    }
    // Threads per block: 2 (Q8_0 / Q8_1, 32 values) or 16 (Q8_K, 256 values).
    let tpb = select(16u, 2u, P.kind == 3u);
    red[lid] = max(max(amax4(v[0]), amax4(v[1])), max(amax4(v[2]), amax4(v[3])));
    workgroupBarrier();
    let g0 = lid - lid % tpb;
    var amax = 0.0;
    for (var j = 0u; j < tpb; j++) {
        amax = max(amax, red[g0 + j]);
    }
    var sx = 0.0;
    var dq = 0.0;
    if (P.kind == 3u) {
        // Q8_0 / Q8_1: d = amax / 127 stored as f16, q = round(x · 127 / amax).
        sx = select(0.0, div_rn(127.0, amax), amax != 0.0);
        dq = round_f16(div_rn(amax, 127.0));
    } else if (amax != 0.0) {
        // Q8_K: iscale = ∓127 / max, d = 1 / iscale (the sign of max cancels in q · d).
        sx = div_rn(127.0, amax);
        dq = div_rn(1.0, sx);
    }
    if (!full) {
        return;
    }
    var pk = vec4<u32>(0u);
    for (var j = 0u; j < 4u; j++) {
        var q: vec4<f32>;
        if (P.kind == 3u) {
            q = round(v[j] * sx);
        } else {
            q = min(round(sx * v[j]), vec4<f32>(127.0));
        }
        let r = q * dq;
        Y[o + 4u * j] = bitcast<u32>(r.x);
        Y[o + 4u * j + 1u] = bitcast<u32>(r.y);
        Y[o + 4u * j + 2u] = bitcast<u32>(r.z);
        Y[o + 4u * j + 3u] = bitcast<u32>(r.w);
        pk[j] = pack4xI8(vec4<i32>(q));
    }
    if (P.q8_base != 0u) {
        let w = P.q8_base + o / 4u;
        Y[w] = pk.x;
        Y[w + 1u] = pk.y;
        Y[w + 2u] = pk.z;
        Y[w + 3u] = pk.w;
        if (lid % 2u == 0u) {
            Y[P.q8_base + P.q8_base / 4u + o / 32u] = bitcast<u32>(dq);
        }
    }
}

// Helpers of `main` (after it: the functions before `@compute` are shared with the fused
// mat-vec kernels, src/gpu/kernels.rs).
fn amax4(v: vec4<f32>) -> f32 {
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}

fn round4(v: vec4<f32>) -> vec4<f32> {
    if (P.kind == 1u) {
        return vec4<f32>(round_f16(v.x), round_f16(v.y), round_f16(v.z), round_f16(v.w));
    }
    return vec4<f32>(round_bf16(v.x), round_bf16(v.y), round_bf16(v.z), round_bf16(v.w));
}
