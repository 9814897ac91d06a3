// Activation rounding: Y[t][i] = the value llama.cpp's quantized activation represents for
// X[t][i], exactly as `model::cpu::ActQuant::apply` computes it on the CPU, so that GPU mat-vec
// and mat-mat kernels see the same inputs as ggml's CPU `vec_dot` (Q8_0 / Q8_1 blocks of 32
// with an f16 scale, Q8_K blocks of 256 with an f32 scale, or plain f16 / bf16 rounding).
//
// One workgroup rounds 256 consecutive values of one token's row (wg.x: 256-value chunk,
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

var<workgroup> red: array<f32, 256>;
var<workgroup> qv: array<i32, 256>;
var<workgroup> dv: array<f32, 8>;
var<workgroup> sc: array<vec2<f32>, 8>;

// Scales computed once per block by one lane (`Tune::actq_lane_div`, GGUFQ_ACTQ_DIV=0: by
// every thread).
const LANE_DIV: bool = $LANE_DIV;

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

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let i = wg.x * 256u + lid;
    let t = wg.y;
    let live = i < P.k && t < P.n_tok;
    let o = P.x_off + t * P.ld + i;
    var v = 0.0;
    if (live) {
        v = X[o];
    }
    if (P.kind <= 2u) {
        if (live) {
            Y[o] = bitcast<u32>(select(round_bf16(v), round_f16(v), P.kind == 1u));
        }
        return;
    }
    let bs = select(256u, 32u, P.kind == 3u);
    red[lid] = abs(v);
    workgroupBarrier();
    for (var s = bs / 2u; s > 0u; s >>= 1u) {
        if ((lid % bs) < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    var q = 0.0;
    var dq = 0.0;
    if (LANE_DIV) {
        // The long divisions once per block, by lanes 0.. of the first warp (8 blocks of
        // Q8_0 in one warp's pass instead of one pass per warp), shared through `sc`.
        if (lid < 256u / bs) {
            let amax = red[lid * bs];
            var mul = 0.0;
            var d = 0.0;
            if (P.kind == 3u) {
                mul = select(0.0, div_rn(127.0, amax), amax != 0.0);
                d = round_f16(div_rn(amax, 127.0));
            } else if (amax != 0.0) {
                mul = div_rn(127.0, amax);
                d = div_rn(1.0, mul);
            }
            sc[lid] = vec2<f32>(mul, d);
        }
        workgroupBarrier();
        let m = sc[lid / bs];
        dq = m.y;
        if (P.kind == 3u) {
            q = round(v * m.x);
        } else if (m.x != 0.0) {
            q = min(round(m.x * v), 127.0);
        }
    } else {
        let amax = red[lid - lid % bs];
        if (P.kind == 3u) {
            // Q8_0 / Q8_1: d = amax / 127 stored as f16, q = round(x · 127 / amax).
            let id = select(0.0, div_rn(127.0, amax), amax != 0.0);
            dq = round_f16(div_rn(amax, 127.0));
            q = round(v * id);
        } else if (amax != 0.0) {
            // Q8_K: iscale = ∓127 / max, d = 1 / iscale (the sign of max cancels in q · d).
            let iscale = div_rn(127.0, amax);
            dq = div_rn(1.0, iscale);
            q = min(round(iscale * v), 127.0);
        }
    }
    if (live) {
        Y[o] = bitcast<u32>(q * dq);
    }
    if (P.q8_base == 0u) {
        return;
    }
    qv[lid] = i32(q);
    if (lid % 32u == 0u) {
        dv[lid / 32u] = dq;
    }
    workgroupBarrier();
    // Row values are whole 32-value units here (the Q8 kinds need whole blocks).
    let base = P.x_off + t * P.ld + wg.x * 256u;
    if (lid < 64u && wg.x * 256u + 4u * lid < P.k && t < P.n_tok) {
        let j = 4u * lid;
        Y[P.q8_base + base / 4u + lid] = pack4xI8(vec4<i32>(qv[j], qv[j + 1u], qv[j + 2u], qv[j + 3u]));
    }
    if (lid < 8u && wg.x * 256u + 32u * lid < P.k && t < P.n_tok) {
        Y[P.q8_base + P.q8_base / 4u + base / 32u + lid] = bitcast<u32>(dv[lid]);
    }
}
