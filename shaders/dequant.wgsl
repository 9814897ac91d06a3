// Dequantization of one group of 4 weights, one function per ggml type.
//
// Every type is read as 32-weight units: `b` is the block index inside the buffer, `sub` the
// unit inside the block (0 for 32-weight blocks, 0..7 for 256-weight K-quant blocks) and `j`
// (0..7) picks weights 4j..4j+3 of the unit. Blocks whose size is not a multiple of 4 bytes
// (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K) are repacked on upload: their f16 scale `d` moves to a
// separate array at word `$DOFF`, the rest of the block stays as 4-byte words.
// `$W` is the weight buffer (array<u32>), `$S` the function-name suffix.
//
// `idot$S` (types with an integer decode path): the unit's dot product with the activation as
// int8 quants (`xa`: values 0..15, `xb`: values 16..31, 4 per word, as the CPU's Q8_0 / Q8_K
// blocks hold them) through `dot4I8Packed`; `sx0` / `sx1` are the sums of the quants of the
// two halves. Returns the unit's sum in weight units (the caller multiplies by the
// activation's scale), with integer sums per sub-block as ggml's CPU `vec_dot` forms them.

// @type F32 words=32 upb=1
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let o = b * 32u + j * 4u;
    return bitcast<vec4<f32>>(vec4<u32>($W[o], $W[o + 1u], $W[o + 2u], $W[o + 3u]));
}

// @type F16 words=16 upb=1
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let o = b * 16u + j * 2u;
    return vec4<f32>(unpack2x16float($W[o]), unpack2x16float($W[o + 1u]));
}

// @type BF16 words=16 upb=1
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let o = b * 16u + j * 2u;
    let a = $W[o];
    let c = $W[o + 1u];
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, c << 16u, c & 0xffff0000u));
}

// @type Q4_0 words=4 upb=1 dsep
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let q = $W[b * 4u + (j & 3u)] >> ((j >> 2u) * 4u);
    let v = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
    return d * (v - 8.0);
}

// Unit dot: d · Σ (q − 8)·x over one 32-weight block (x = the unit's 8 x vectors).
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let o = b * 4u;
    let w0 = $W[o];
    let w1 = $W[o + 1u];
    let w2 = $W[o + 2u];
    let w3 = $W[o + 3u];
    let m = 0x0f0f0f0fu;
    let s = dot(vec4<f32>(unpack4xU8(w0 & m)), x0) + dot(vec4<f32>(unpack4xU8(w1 & m)), x1)
          + dot(vec4<f32>(unpack4xU8(w2 & m)), x2) + dot(vec4<f32>(unpack4xU8(w3 & m)), x3)
          + dot(vec4<f32>(unpack4xU8((w0 >> 4u) & m)), x4) + dot(vec4<f32>(unpack4xU8((w1 >> 4u) & m)), x5)
          + dot(vec4<f32>(unpack4xU8((w2 >> 4u) & m)), x6) + dot(vec4<f32>(unpack4xU8((w3 >> 4u) & m)), x7);
    let sx = dot(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, vec4<f32>(1.0));
    return d * (s - 8.0 * sx);
}

// Integer unit dot: Σ (q − 8)·xq over one block.
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let o = b * 4u;
    let w = vec4<u32>($W[o], $W[o + 1u], $W[o + 2u], $W[o + 3u]);
    let m = 0x0f0f0f0fu;
    let lo = w & vec4<u32>(m);
    let hi = (w >> vec4<u32>(4u)) & vec4<u32>(m);
    let s = dot4I8Packed(lo.x, xa.x) + dot4I8Packed(lo.y, xa.y) + dot4I8Packed(lo.z, xa.z) + dot4I8Packed(lo.w, xa.w)
          + dot4I8Packed(hi.x, xb.x) + dot4I8Packed(hi.y, xb.y) + dot4I8Packed(hi.z, xb.z) + dot4I8Packed(hi.w, xb.w);
    return d * f32(s - 8 * (sx0 + sx1));
}

// @type Q4_1 words=5 upb=1
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float($W[b * 5u]);
    let q = $W[b * 5u + 1u + (j & 3u)] >> ((j >> 2u) * 4u);
    let v = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
    return dm.x * v + dm.y;
}

// @type Q5_0 words=5 upb=1 dsep
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let h = $W[b * 5u] >> (4u * j);
    let q = $W[b * 5u + 1u + (j & 3u)] >> ((j >> 2u) * 4u);
    let v = vec4<f32>(f32((q & 15u) | ((h & 1u) << 4u)), f32(((q >> 8u) & 15u) | (((h >> 1u) & 1u) << 4u)),
                      f32(((q >> 16u) & 15u) | (((h >> 2u) & 1u) << 4u)), f32(((q >> 24u) & 15u) | (((h >> 3u) & 1u) << 4u)));
    return d * (v - 16.0);
}

// @type Q5_1 words=6 upb=1
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float($W[b * 6u]);
    let h = $W[b * 6u + 1u] >> (4u * j);
    let q = $W[b * 6u + 2u + (j & 3u)] >> ((j >> 2u) * 4u);
    let v = vec4<f32>(f32((q & 15u) | ((h & 1u) << 4u)), f32(((q >> 8u) & 15u) | (((h >> 1u) & 1u) << 4u)),
                      f32(((q >> 16u) & 15u) | (((h >> 2u) & 1u) << 4u)), f32(((q >> 24u) & 15u) | (((h >> 3u) & 1u) << 4u)));
    return dm.x * v + dm.y;
}

// @type Q8_0 words=8 upb=1 dsep
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let q = bitcast<i32>($W[b * 8u + j]);
    let v = vec4<f32>(f32((q << 24u) >> 24u), f32((q << 16u) >> 24u), f32((q << 8u) >> 24u), f32(q >> 24u));
    return d * v;
}

// Unit dot: d · Σ q·x over one 32-weight block.
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let o = b * 8u;
    let s = dot(vec4<f32>(unpack4xI8($W[o])), x0) + dot(vec4<f32>(unpack4xI8($W[o + 1u])), x1)
          + dot(vec4<f32>(unpack4xI8($W[o + 2u])), x2) + dot(vec4<f32>(unpack4xI8($W[o + 3u])), x3)
          + dot(vec4<f32>(unpack4xI8($W[o + 4u])), x4) + dot(vec4<f32>(unpack4xI8($W[o + 5u])), x5)
          + dot(vec4<f32>(unpack4xI8($W[o + 6u])), x6) + dot(vec4<f32>(unpack4xI8($W[o + 7u])), x7);
    return d * s;
}

// Integer unit dot: Σ q·xq over one block.
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let o = b * 8u;
    let wa = vec4<u32>($W[o], $W[o + 1u], $W[o + 2u], $W[o + 3u]);
    let wb = vec4<u32>($W[o + 4u], $W[o + 5u], $W[o + 6u], $W[o + 7u]);
    let s = dot4I8Packed(wa.x, xa.x) + dot4I8Packed(wa.y, xa.y) + dot4I8Packed(wa.z, xa.z) + dot4I8Packed(wa.w, xa.w)
          + dot4I8Packed(wb.x, xb.x) + dot4I8Packed(wb.y, xb.y) + dot4I8Packed(wb.z, xb.z) + dot4I8Packed(wb.w, xb.w);
    return d * f32(s);
}

// @type Q2_K words=21 upb=8
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let base = b * 21u;
    let dm = unpack2x16float($W[base + 20u]);
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj + (j >> 2u);
    let sc = ($W[base + (is >> 2u)] >> ((is & 3u) * 8u)) & 0xffu;
    let q = $W[base + 4u + 8u * n + j] >> (2u * jj);
    let v = vec4<f32>(f32(q & 3u), f32((q >> 8u) & 3u), f32((q >> 16u) & 3u), f32((q >> 24u) & 3u));
    return (dm.x * f32(sc & 15u)) * v - dm.y * f32(sc >> 4u);
}

// Unit dot: two 16-weight sub-blocks, each d·sc·Σq·x − dmin·m·Σx.
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let base = b * 21u;
    let dm = unpack2x16float($W[base + 20u]);
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj;
    let scw = $W[base + (is >> 2u)] >> ((is & 3u) * 8u);
    let sc0 = scw & 0xffu;
    let sc1 = (scw >> 8u) & 0xffu;
    let qo = base + 4u + 8u * n;
    let sh = 2u * jj;
    let m = 0x03030303u;
    let s0 = dot(vec4<f32>(unpack4xU8(($W[qo] >> sh) & m)), x0) + dot(vec4<f32>(unpack4xU8(($W[qo + 1u] >> sh) & m)), x1)
           + dot(vec4<f32>(unpack4xU8(($W[qo + 2u] >> sh) & m)), x2) + dot(vec4<f32>(unpack4xU8(($W[qo + 3u] >> sh) & m)), x3);
    let s1 = dot(vec4<f32>(unpack4xU8(($W[qo + 4u] >> sh) & m)), x4) + dot(vec4<f32>(unpack4xU8(($W[qo + 5u] >> sh) & m)), x5)
           + dot(vec4<f32>(unpack4xU8(($W[qo + 6u] >> sh) & m)), x6) + dot(vec4<f32>(unpack4xU8(($W[qo + 7u] >> sh) & m)), x7);
    let one = vec4<f32>(1.0);
    let sx0 = dot(x0 + x1 + x2 + x3, one);
    let sx1 = dot(x4 + x5 + x6 + x7, one);
    return dm.x * (f32(sc0 & 15u) * s0 + f32(sc1 & 15u) * s1) - dm.y * (f32(sc0 >> 4u) * sx0 + f32(sc1 >> 4u) * sx1);
}

// Integer unit dot: two 16-weight sub-blocks, d·Σ sc·Σq·xq − dmin·Σ m·Σxq.
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let base = b * 21u;
    let dm = unpack2x16float($W[base + 20u]);
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj;
    let scw = $W[base + (is >> 2u)] >> ((is & 3u) * 8u);
    let qo = base + 4u + 8u * n;
    let sh = vec4<u32>(2u * jj);
    let m = vec4<u32>(0x03030303u);
    let qa = (vec4<u32>($W[qo], $W[qo + 1u], $W[qo + 2u], $W[qo + 3u]) >> sh) & m;
    let qb = (vec4<u32>($W[qo + 4u], $W[qo + 5u], $W[qo + 6u], $W[qo + 7u]) >> sh) & m;
    let s0 = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w);
    let s1 = dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    let isc = i32(scw & 15u) * s0 + i32((scw >> 8u) & 15u) * s1;
    let imn = i32((scw >> 4u) & 15u) * sx0 + i32((scw >> 12u) & 15u) * sx1;
    return dm.x * f32(isc) - dm.y * f32(imn);
}

// @type Q3_K words=27 upb=8 dsep
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let base = b * 27u;
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj + (j >> 2u);
    let k = is >> 2u;
    let a = $W[base + 24u + (k & 1u)];
    let a2 = $W[base + 26u];
    let sk = ((a >> ((k >> 1u) * 4u)) & 0x0f0f0f0fu) | (((a2 >> (2u * k)) & 0x03030303u) << 4u);
    let sc = f32(i32((sk >> (8u * (is & 3u))) & 0xffu) - 32);
    let q = $W[base + 8u + 8u * n + j] >> (2u * jj);
    let hm = $W[base + j] >> (4u * n + jj);
    let v = vec4<f32>(f32(q & 3u), f32((q >> 8u) & 3u), f32((q >> 16u) & 3u), f32((q >> 24u) & 3u));
    let h = vec4<f32>(f32(hm & 1u), f32((hm >> 8u) & 1u), f32((hm >> 16u) & 1u), f32((hm >> 24u) & 1u));
    return (d * sc) * (v - 4.0 + 4.0 * h);
}

// Integer unit dot: two 16-weight sub-blocks, d·Σ sc·Σ(q − 4)·xq (q = 2 low bits | high bit
// << 2, the ggml value + 4).
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let base = b * 27u;
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let n = sub >> 2u;
    let jj = sub & 3u;
    let is = 8u * n + 2u * jj;
    let k = is >> 2u;
    let a = $W[base + 24u + (k & 1u)];
    let a2 = $W[base + 26u];
    let sk = ((a >> ((k >> 1u) * 4u)) & 0x0f0f0f0fu) | (((a2 >> (2u * k)) & 0x03030303u) << 4u);
    let scw = sk >> (8u * (is & 3u));
    let sc0 = i32(scw & 0xffu) - 32;
    let sc1 = i32((scw >> 8u) & 0xffu) - 32;
    let qo = base + 8u + 8u * n;
    let sh = vec4<u32>(2u * jj);
    let hs = vec4<u32>(4u * n + jj);
    let m = vec4<u32>(0x03030303u);
    let hm = vec4<u32>(0x01010101u);
    let qa = ((vec4<u32>($W[qo], $W[qo + 1u], $W[qo + 2u], $W[qo + 3u]) >> sh) & m)
           | (((vec4<u32>($W[base], $W[base + 1u], $W[base + 2u], $W[base + 3u]) >> hs) & hm) << vec4<u32>(2u));
    let qb = ((vec4<u32>($W[qo + 4u], $W[qo + 5u], $W[qo + 6u], $W[qo + 7u]) >> sh) & m)
           | (((vec4<u32>($W[base + 4u], $W[base + 5u], $W[base + 6u], $W[base + 7u]) >> hs) & hm) << vec4<u32>(2u));
    let s0 = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w);
    let s1 = dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    return d * f32(sc0 * (s0 - 4 * sx0) + sc1 * (s1 - 4 * sx1));
}

// @type Q4_K words=36 upb=8
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let base = b * 36u;
    let dm = unpack2x16float($W[base]);
    var sc: u32;
    var mn: u32;
    let s0 = $W[base + 1u];
    let s1 = $W[base + 2u];
    let s2 = $W[base + 3u];
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let q = $W[base + 4u + 8u * (sub >> 1u) + j] >> (4u * (sub & 1u));
    let v = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
    return (dm.x * f32(sc)) * v - dm.y * f32(mn);
}

// Unit dot: one 32-weight sub-block, d·sc·Σq·x − dmin·m·Σx.
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let base = b * 36u;
    let dm = unpack2x16float($W[base]);
    var sc: u32;
    var mn: u32;
    let s0 = $W[base + 1u];
    let s1 = $W[base + 2u];
    let s2 = $W[base + 3u];
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let qo = base + 4u + 8u * (sub >> 1u);
    let sh = 4u * (sub & 1u);
    let m = 0x0f0f0f0fu;
    let s = dot(vec4<f32>(unpack4xU8(($W[qo] >> sh) & m)), x0) + dot(vec4<f32>(unpack4xU8(($W[qo + 1u] >> sh) & m)), x1)
          + dot(vec4<f32>(unpack4xU8(($W[qo + 2u] >> sh) & m)), x2) + dot(vec4<f32>(unpack4xU8(($W[qo + 3u] >> sh) & m)), x3)
          + dot(vec4<f32>(unpack4xU8(($W[qo + 4u] >> sh) & m)), x4) + dot(vec4<f32>(unpack4xU8(($W[qo + 5u] >> sh) & m)), x5)
          + dot(vec4<f32>(unpack4xU8(($W[qo + 6u] >> sh) & m)), x6) + dot(vec4<f32>(unpack4xU8(($W[qo + 7u] >> sh) & m)), x7);
    let sx = dot(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, vec4<f32>(1.0));
    return dm.x * f32(sc) * s - dm.y * f32(mn) * sx;
}

// Integer unit dot: one 32-weight sub-block, d·sc·Σq·xq − dmin·m·Σxq.
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let base = b * 36u;
    let hdr = vec4<u32>($W[base], $W[base + 1u], $W[base + 2u], $W[base + 3u]);
    let dm = unpack2x16float(hdr.x);
    var sc: u32;
    var mn: u32;
    let s0 = hdr.y;
    let s1 = hdr.z;
    let s2 = hdr.w;
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let qo = base + 4u + 8u * (sub >> 1u);
    let sh = vec4<u32>(4u * (sub & 1u));
    let m = vec4<u32>(0x0f0f0f0fu);
    let qa = (vec4<u32>($W[qo], $W[qo + 1u], $W[qo + 2u], $W[qo + 3u]) >> sh) & m;
    let qb = (vec4<u32>($W[qo + 4u], $W[qo + 5u], $W[qo + 6u], $W[qo + 7u]) >> sh) & m;
    let s = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w)
          + dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    return dm.x * f32(i32(sc) * s) - dm.y * f32(i32(mn) * (sx0 + sx1));
}

// Integer dot of a unit pair (sub even, sub + 1): the pair's 32 quant bytes are loaded once,
// low nibbles for `sub` (input xa, xb), high nibbles for `sub + 1` (xc, xd); each unit's
// value as idot computes it.
fn idot2$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32,
           xc: vec4<u32>, xd: vec4<u32>, sy0: i32, sy1: i32) -> vec2<f32> {
    let base = b * 36u;
    let hdr = vec4<u32>($W[base], $W[base + 1u], $W[base + 2u], $W[base + 3u]);
    let dm = unpack2x16float(hdr.x);
    var sc0: u32;
    var mn0: u32;
    var sc1: u32;
    var mn1: u32;
    if (sub < 4u) {
        sc0 = (hdr.y >> (8u * sub)) & 63u;
        mn0 = (hdr.z >> (8u * sub)) & 63u;
        sc1 = (hdr.y >> (8u * sub + 8u)) & 63u;
        mn1 = (hdr.z >> (8u * sub + 8u)) & 63u;
    } else {
        let t = sub - 4u;
        let h0 = (hdr.w >> (8u * t)) & 0xffu;
        let h1 = (hdr.w >> (8u * t + 8u)) & 0xffu;
        sc0 = (h0 & 15u) | (((hdr.y >> (8u * t + 6u)) & 3u) << 4u);
        mn0 = (h0 >> 4u) | (((hdr.z >> (8u * t + 6u)) & 3u) << 4u);
        sc1 = (h1 & 15u) | (((hdr.y >> (8u * t + 14u)) & 3u) << 4u);
        mn1 = (h1 >> 4u) | (((hdr.z >> (8u * t + 14u)) & 3u) << 4u);
    }
    let qo = base + 4u + 8u * (sub >> 1u);
    let m = vec4<u32>(0x0f0f0f0fu);
    let wa = vec4<u32>($W[qo], $W[qo + 1u], $W[qo + 2u], $W[qo + 3u]);
    let wb = vec4<u32>($W[qo + 4u], $W[qo + 5u], $W[qo + 6u], $W[qo + 7u]);
    let qa = wa & m;
    let qb = wb & m;
    let ha = (wa >> vec4<u32>(4u)) & m;
    let hb = (wb >> vec4<u32>(4u)) & m;
    let s0 = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w)
           + dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    let s1 = dot4I8Packed(ha.x, xc.x) + dot4I8Packed(ha.y, xc.y) + dot4I8Packed(ha.z, xc.z) + dot4I8Packed(ha.w, xc.w)
           + dot4I8Packed(hb.x, xd.x) + dot4I8Packed(hb.y, xd.y) + dot4I8Packed(hb.z, xd.z) + dot4I8Packed(hb.w, xd.w);
    return vec2<f32>(dm.x * f32(i32(sc0) * s0) - dm.y * f32(i32(mn0) * (sx0 + sx1)),
                     dm.x * f32(i32(sc1) * s1) - dm.y * f32(i32(mn1) * (sy0 + sy1)));
}

// @type Q5_K words=44 upb=8
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let base = b * 44u;
    let dm = unpack2x16float($W[base]);
    var sc: u32;
    var mn: u32;
    let s0 = $W[base + 1u];
    let s1 = $W[base + 2u];
    let s2 = $W[base + 3u];
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let q = $W[base + 12u + 8u * (sub >> 1u) + j] >> (4u * (sub & 1u));
    let h = $W[base + 4u + j] >> sub;
    let v = vec4<f32>(f32((q & 15u) | ((h & 1u) << 4u)), f32(((q >> 8u) & 15u) | (((h >> 8u) & 1u) << 4u)),
                      f32(((q >> 16u) & 15u) | (((h >> 16u) & 1u) << 4u)), f32(((q >> 24u) & 15u) | (((h >> 24u) & 1u) << 4u)));
    return (dm.x * f32(sc)) * v - dm.y * f32(mn);
}

// Unit dot: one 32-weight sub-block, d·sc·Σq·x − dmin·m·Σx (q = nibble | high bit << 4).
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let base = b * 44u;
    let dm = unpack2x16float($W[base]);
    var sc: u32;
    var mn: u32;
    let s0 = $W[base + 1u];
    let s1 = $W[base + 2u];
    let s2 = $W[base + 3u];
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let qo = base + 12u + 8u * (sub >> 1u);
    let sh = 4u * (sub & 1u);
    let ho = base + 4u;
    let m = 0x0f0f0f0fu;
    let hm = 0x01010101u;
    let s = dot(vec4<f32>(unpack4xU8((($W[qo] >> sh) & m) | ((($W[ho] >> sub) & hm) << 4u))), x0)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 1u] >> sh) & m) | ((($W[ho + 1u] >> sub) & hm) << 4u))), x1)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 2u] >> sh) & m) | ((($W[ho + 2u] >> sub) & hm) << 4u))), x2)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 3u] >> sh) & m) | ((($W[ho + 3u] >> sub) & hm) << 4u))), x3)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 4u] >> sh) & m) | ((($W[ho + 4u] >> sub) & hm) << 4u))), x4)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 5u] >> sh) & m) | ((($W[ho + 5u] >> sub) & hm) << 4u))), x5)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 6u] >> sh) & m) | ((($W[ho + 6u] >> sub) & hm) << 4u))), x6)
          + dot(vec4<f32>(unpack4xU8((($W[qo + 7u] >> sh) & m) | ((($W[ho + 7u] >> sub) & hm) << 4u))), x7);
    let sx = dot(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, vec4<f32>(1.0));
    return dm.x * f32(sc) * s - dm.y * f32(mn) * sx;
}

// Integer unit dot: one 32-weight sub-block, d·sc·Σq·xq − dmin·m·Σxq (q = nibble | high bit << 4).
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let base = b * 44u;
    let hdr = vec4<u32>($W[base], $W[base + 1u], $W[base + 2u], $W[base + 3u]);
    let dm = unpack2x16float(hdr.x);
    var sc: u32;
    var mn: u32;
    let s0 = hdr.y;
    let s1 = hdr.z;
    let s2 = hdr.w;
    if (sub < 4u) {
        sc = (s0 >> (8u * sub)) & 63u;
        mn = (s1 >> (8u * sub)) & 63u;
    } else {
        let t = sub - 4u;
        let hi = (s2 >> (8u * t)) & 0xffu;
        sc = (hi & 15u) | (((s0 >> (8u * t + 6u)) & 3u) << 4u);
        mn = (hi >> 4u) | (((s1 >> (8u * t + 6u)) & 3u) << 4u);
    }
    let qo = base + 12u + 8u * (sub >> 1u);
    let ho = base + 4u;
    let sh = vec4<u32>(4u * (sub & 1u));
    let hsh = vec4<u32>(sub);
    let m = vec4<u32>(0x0f0f0f0fu);
    let hm = vec4<u32>(0x01010101u);
    let qa = ((vec4<u32>($W[qo], $W[qo + 1u], $W[qo + 2u], $W[qo + 3u]) >> sh) & m)
           | (((vec4<u32>($W[ho], $W[ho + 1u], $W[ho + 2u], $W[ho + 3u]) >> hsh) & hm) << vec4<u32>(4u));
    let qb = ((vec4<u32>($W[qo + 4u], $W[qo + 5u], $W[qo + 6u], $W[qo + 7u]) >> sh) & m)
           | (((vec4<u32>($W[ho + 4u], $W[ho + 5u], $W[ho + 6u], $W[ho + 7u]) >> hsh) & hm) << vec4<u32>(4u));
    let s = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w)
          + dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    return dm.x * f32(i32(sc) * s) - dm.y * f32(i32(mn) * (sx0 + sx1));
}

// @type Q6_K words=52 upb=8 dsep
fn deq4$S(b: u32, sub: u32, j: u32) -> vec4<f32> {
    let base = b * 52u;
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let n = sub >> 2u;
    let jj = sub & 3u;
    let ql = $W[base + 16u * n + 8u * (jj & 1u) + j] >> (4u * (jj >> 1u));
    let qh = $W[base + 32u + 8u * n + j] >> (2u * jj);
    let is = 8u * n + 2u * jj + (j >> 2u);
    let sc = f32(bitcast<i32>(($W[base + 48u + (is >> 2u)] >> (8u * (is & 3u))) << 24u) >> 24u);
    let v = vec4<f32>(f32((ql & 15u) | ((qh & 3u) << 4u)), f32(((ql >> 8u) & 15u) | (((qh >> 8u) & 3u) << 4u)),
                      f32(((ql >> 16u) & 15u) | (((qh >> 16u) & 3u) << 4u)), f32(((ql >> 24u) & 15u) | (((qh >> 24u) & 3u) << 4u)));
    return (d * sc) * (v - 32.0);
}

// Unit dot: two 16-weight sub-blocks, d·sc·Σ(q − 32)·x (q = 4 low bits | 2 high bits << 4).
fn udot$S(b: u32, sub: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
          x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    let base = b * 52u;
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let n = sub >> 2u;
    let jj = sub & 3u;
    let lo = base + 16u * n + 8u * (jj & 1u);
    let ls = 4u * (jj >> 1u);
    let ho = base + 32u + 8u * n;
    let hs = 2u * jj;
    let m = 0x0f0f0f0fu;
    let m2 = 0x03030303u;
    let s0 = dot(vec4<f32>(unpack4xU8((($W[lo] >> ls) & m) | ((($W[ho] >> hs) & m2) << 4u))), x0)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 1u] >> ls) & m) | ((($W[ho + 1u] >> hs) & m2) << 4u))), x1)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 2u] >> ls) & m) | ((($W[ho + 2u] >> hs) & m2) << 4u))), x2)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 3u] >> ls) & m) | ((($W[ho + 3u] >> hs) & m2) << 4u))), x3);
    let s1 = dot(vec4<f32>(unpack4xU8((($W[lo + 4u] >> ls) & m) | ((($W[ho + 4u] >> hs) & m2) << 4u))), x4)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 5u] >> ls) & m) | ((($W[ho + 5u] >> hs) & m2) << 4u))), x5)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 6u] >> ls) & m) | ((($W[ho + 6u] >> hs) & m2) << 4u))), x6)
           + dot(vec4<f32>(unpack4xU8((($W[lo + 7u] >> ls) & m) | ((($W[ho + 7u] >> hs) & m2) << 4u))), x7);
    let one = vec4<f32>(1.0);
    let is = 8u * n + 2u * jj;
    let scw = $W[base + 48u + (is >> 2u)] >> (8u * (is & 3u));
    let sc0 = f32(bitcast<i32>(scw << 24u) >> 24u);
    let sc1 = f32(bitcast<i32>((scw >> 8u) << 24u) >> 24u);
    return d * (sc0 * (s0 - 32.0 * dot(x0 + x1 + x2 + x3, one)) + sc1 * (s1 - 32.0 * dot(x4 + x5 + x6 + x7, one)));
}

// Integer unit dot: two 16-weight sub-blocks, d·Σ sc·Σ(q − 32)·xq (q = 4 low bits | 2 high bits << 4).
fn idot$S(b: u32, sub: u32, xa: vec4<u32>, xb: vec4<u32>, sx0: i32, sx1: i32) -> f32 {
    let base = b * 52u;
    let d = unpack2x16float($W[$DOFF + (b >> 1u)])[b & 1u];
    let n = sub >> 2u;
    let jj = sub & 3u;
    let lo = base + 16u * n + 8u * (jj & 1u);
    let ls = vec4<u32>(4u * (jj >> 1u));
    let ho = base + 32u + 8u * n;
    let hs = vec4<u32>(2u * jj);
    let m = vec4<u32>(0x0f0f0f0fu);
    let m2 = vec4<u32>(0x03030303u);
    let qa = ((vec4<u32>($W[lo], $W[lo + 1u], $W[lo + 2u], $W[lo + 3u]) >> ls) & m)
           | (((vec4<u32>($W[ho], $W[ho + 1u], $W[ho + 2u], $W[ho + 3u]) >> hs) & m2) << vec4<u32>(4u));
    let qb = ((vec4<u32>($W[lo + 4u], $W[lo + 5u], $W[lo + 6u], $W[lo + 7u]) >> ls) & m)
           | (((vec4<u32>($W[ho + 4u], $W[ho + 5u], $W[ho + 6u], $W[ho + 7u]) >> hs) & m2) << vec4<u32>(4u));
    let s0 = dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z) + dot4I8Packed(qa.w, xa.w);
    let s1 = dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y) + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
    let is = 8u * n + 2u * jj;
    let scw = $W[base + 48u + (is >> 2u)] >> (8u * (is & 3u));
    let sc0 = bitcast<i32>(scw << 24u) >> 24u;
    let sc1 = bitcast<i32>((scw >> 8u) << 24u) >> 24u;
    return d * f32(sc0 * (s0 - 32 * sx0) + sc1 * (s1 - 32 * sx1));
}
