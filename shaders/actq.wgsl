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
// Block maxima and quant packing by subgroup operations (`Tune::actq_sub`; the builder keeps
// the SUBGROUP region of `main` only then, with SG_MAX / SG_SHUF made the subgroup builtins or
// their workgroup-memory emulation).
const SUB: bool = $SUB;
// The scale divisions by `div_fast` (`Tune::actq_fastdiv`) instead of `div_rn`; DIV_SKEW is
// added to its estimate (tests only: the correction must undo it; 0 in the engine).
const FAST_DIV: bool = $FAST_DIV;
const DIV_SKEW: i32 = $DIV_SKEWi;

// The division of the block scales: `div_rn`'s correctly rounded quotient, by either method.
fn div_q(a: f32, b: f32) -> f32 {
    if (FAST_DIV) {
        return div_fast(a, b);
    }
    return div_rn(a, b);
}

// `div_rn(a, b)` without its 25-step serial loop: the 25-bit quotient is estimated from the
// f32 quotient (Vulkan: within 2.5 ulp, i.e. a few units of the 25-bit integer) and then
// corrected until the exact remainder r · 2^24 − q · mb (wrapping u32 arithmetic, exact since
// it is small) lies in [0, mb): the same quotient, remainder and rounding as the long division,
// so the same bits. An estimate the correction cannot fix falls back to `div_rn`.
fn div_fast(a: f32, b: f32) -> f32 {
    let n = div_in(a, b);
    if (!n.ok) {
        return a / b;
    }
    let r = n.r;
    let mb = n.mb;
    // q = floor(r · 2^24 / mb) in [2^24, 2^25): 24 significand bits and a guard bit.
    let est = clamp(f32(r) / f32(mb) * 16777216.0, 16777216.0, 33554431.0);
    var q = u32(i32(u32(est)) + DIV_SKEW);
    let d = i32(mb);
    var rem = bitcast<i32>((r << 24u) - q * mb);
    for (var k = 0u; k < 16u && rem < 0; k++) {
        q -= 1u;
        rem += d;
    }
    for (var k = 0u; k < 16u && rem >= d; k++) {
        q += 1u;
        rem -= d;
    }
    if (rem < 0 || rem >= d) {
        return div_rn(a, b);
    }
    return div_out(q, rem != 0, n.e, a, b);
}

// a / b correctly rounded (ties to even) for positive normal a, b with a normal quotient, by
// long division of the 24-bit significands: GPU `/` may be approximate and `fma` unfused
// (lavapipe), so neither gives the CPU's IEEE quotient. Other inputs fall back to `/`.
fn div_rn(a: f32, b: f32) -> f32 {
    let n = div_in(a, b);
    if (!n.ok) {
        return a / b;
    }
    var r = n.r;
    let mb = n.mb;
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
    return div_out(q, r != 0u, n.e, a, b);
}

// The significands of a division a / b: r = a's in [mb, 2 mb) (doubled when smaller than b's
// mb) and the quotient's exponent e; `ok` false for the inputs the exact divisions leave to
// `/` (zero, subnormal, infinite, NaN or negative operands).
struct DivIn {
    ok: bool,
    r: u32,
    mb: u32,
    e: i32,
}

fn div_in(a: f32, b: f32) -> DivIn {
    let ba = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let ea = i32(ba >> 23u) - 127;
    let eb = i32(bb >> 23u) - 127;
    if (ea <= -127 || eb <= -127 || ea >= 128 || eb >= 128 || (ba >> 31u) != 0u || (bb >> 31u) != 0u) {
        return DivIn(false, 0u, 0u, 0);
    }
    let ma = (ba & 0x7fffffu) | 0x800000u;
    let mb = (bb & 0x7fffffu) | 0x800000u;
    if (ma < mb) {
        return DivIn(true, ma << 1u, mb, ea - eb - 1);
    }
    return DivIn(true, ma, mb, ea - eb);
}

// The f32 of a 25-bit quotient q (24 significand bits and a guard bit) with exponent e0,
// rounded to nearest even (`inexact`: a remainder is left); a / b when the result is not a
// normal f32.
fn div_out(q: u32, inexact: bool, e0: i32, a: f32, b: f32) -> f32 {
    var e = e0;
    var m = q >> 1u;
    if ((q & 1u) == 1u && (inexact || (m & 1u) == 1u)) {
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
    // SUBGROUP{
    if (SUB) {
        // A Q8_0 block is one subgroup of 32 lanes; a Q8_K block's 8 subgroup maxima meet in
        // `red` (the only barrier). Every lane computes its block's scales (the same function
        // as one lane in the path below, so the same values), and lanes 0..7 of each subgroup
        // gather four quants each by shuffles: no barrier for the scales nor the packing.
        var amax = SG_MAX(abs(v));
        if (bs == 256u) {
            if (lid % 32u == 0u) {
                red[lid / 32u] = amax;
            }
            workgroupBarrier();
            amax = max(max(max(red[0], red[1]), max(red[2], red[3])), max(max(red[4], red[5]), max(red[6], red[7])));
        }
        var mul = 0.0;
        var d = 0.0;
        var q = 0.0;
        if (P.kind == 3u) {
            mul = select(0.0, div_q(127.0, amax), amax != 0.0);
            d = round_f16(div_q(amax, 127.0));
            q = round(v * mul);
        } else if (amax != 0.0) {
            mul = div_q(127.0, amax);
            d = div_q(1.0, mul);
            q = min(round(mul * v), 127.0);
        }
        if (live) {
            Y[o] = bitcast<u32>(q * d);
        }
        if (P.q8_base == 0u) {
            return;
        }
        let l = lid % 32u;
        let qi = i32(q);
        let j = 4u * (l % 8u);
        let q0 = SG_SHUF(qi, j);
        let q1 = SG_SHUF(qi, j + 1u);
        let q2 = SG_SHUF(qi, j + 2u);
        let q3 = SG_SHUF(qi, j + 3u);
        let base = P.x_off + t * P.ld + wg.x * 256u;
        // Word w of the workgroup's 64 holds values 4w .. 4w + 3 (lanes 4l.. of subgroup w / 8).
        let w = lid / 32u * 8u + l;
        if (l < 8u && wg.x * 256u + 4u * w < P.k && t < P.n_tok) {
            Y[P.q8_base + base / 4u + w] = pack4xI8(vec4<i32>(q0, q1, q2, q3));
        }
        if (l == 0u && wg.x * 256u + lid < P.k && t < P.n_tok) {
            Y[P.q8_base + P.q8_base / 4u + base / 32u + lid / 32u] = bitcast<u32>(d);
        }
        return;
    }
    // }SUBGROUP
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
                mul = select(0.0, div_q(127.0, amax), amax != 0.0);
                d = round_f16(div_q(amax, 127.0));
            } else if (amax != 0.0) {
                mul = div_q(127.0, amax);
                d = div_q(1.0, mul);
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
            let id = select(0.0, div_q(127.0, amax), amax != 0.0);
            dq = round_f16(div_q(amax, 127.0));
            q = round(v * id);
        } else if (amax != 0.0) {
            // Q8_K: iscale = ∓127 / max, d = 1 / iscale (the sign of max cancels in q · d).
            let iscale = div_q(127.0, amax);
            dq = div_q(1.0, iscale);
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
