// Decode attention with RoPE and the KV-cache store fused in: one workgroup per (head, token),
// for batches whose tokens all belong to different sequences (one new position each). The
// workgroup rotates its head's Q and its KV head's K of the new token from the QKV buffer
// (llama's NORM mode, cos/sin from the f64 table), rounds them to f16 as the f16 KV cache and
// f16 Q of llama.cpp do, stores K and V into the cache (the first head of each KV group does),
// and attends over positions 0 ..= pos: older positions from the cache, the new one from
// workgroup memory, so no other workgroup's store is read.
//
// Split (flash-decoding, NCH > 1): wg.x = head · NCH + chunk; the head's positions 0 ..= pos
// are cut into NCH chunks of L = max(LMIN, ceil((pos + 1) / NCH)) positions (trailing chunks
// may be empty), and each workgroup writes its chunk's accumulator (normalised by the chunk's
// own sum) to O[((tok · n_head + h) · NCH + c) · hd ..] and (max, sum) to
// O[P.pad1 + 2 · ((tok · n_head + h) · NCH + c) ..]; the rounding of the attention output
// combines them (`attn_combine` in src/gpu/kernels.rs). The workgroup whose chunk holds `pos`
// stores the new K and V; the others read only older positions from the cache.
// EXACT: every workgroup of a head scores all positions (the unsplit kernel's maximum and sum,
// so the same f16-rounded probabilities) and weighs only its chunk's V rows; the partial
// accumulators then just add up.
//
// Last-workgroup epilogue (`KernelKey::AttnDecodeQ`, split only): after writing its partial
// result every workgroup arrives at the counter of its group of 256 / hd heads (the heads of
// one 256-value workgroup of the rounding, `shaders/actq.wgsl`); the last of the group's
// workgroups combines the group's partial results and rounds them for `wo` with actq.wgsl's
// own code (`arrive` and `actq_main`, appended by the builder in src/gpu/kernels.rs), then
// resets the counter (the builder inserts the call; nothing in the plain kernel).
//
// Short contexts (`Tune::attn_pre`, `Tune::attn_skip`): the K row of each thread's first
// scored position (KPRE) and the V rows of its first four accumulated positions (VPRE) are
// loaded into registers before the new token's Q/K/V are read, so their memory latency
// overlaps that phase; the arithmetic and its order are unchanged. SKIP (epilogue with the
// live-chunk combine only): a chunk past the last position returns at once, without a partial
// result or an arrival (the group's counter then waits for the live chunks only).
//
// Coalesced scoring (COAL, `Tune::attn_coal`: flash-decoding proper, i.e. long contexts, and
// with `Tune::attn_coal_exact` the exact split and unsplit kernel too): a K row is scored by
// KG lanes, lane g loading the row's vec4 elements g, g + KG, … (one load instruction reads
// KG · 8 contiguous bytes of the f16 row, instead of 8 bytes of each of 32 rows 8 KiB apart),
// KU rows per lane group in flight, and the KG partial dots meet in the builder's reduction
// (subgroup shuffles, or workgroup memory); V rows VU at a time per thread, in the same
// order as below. Same operations as the one-row-per-thread path, each dot summed in another
// order; no register prefetch.
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
    n_rot: u32,
    pad1: u32, // split: word of the first (max, sum) pair in O
    // Sliding window (gemma3's local layers): positions pos - window < p <= pos; 0: none.
    window: u32,
    // Epilogue only: the rounding's row length, row stride, kind and packed-quant base.
    qk: u32,
    qld: u32,
    qkind: u32,
    q8b: u32,
}
@group(0) @binding(0) var<storage, read> QKV: array<f32>;
@group(0) @binding(1) var<storage, read_write> KC: array<$KV4>;
@group(0) @binding(2) var<storage, read_write> VC: array<$KV4>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> CS: array<vec2<f32>>;

const CTX: u32 = $CTXu;
// Head size / 4, a constant so that the loops over a head unroll (all loads in flight).
const HD4: u32 = $HD4u;
const NCH: u32 = $NCHu;
const LMIN: u32 = $LMINu;
const EXACT: bool = $EXACT;
const KPRE: bool = $KPRE;
const VPRE: bool = $VPRE;
const SKIP: bool = $SKIP;
const COAL: bool = $COAL;
// Lanes per K row, K rows per lane group in flight, vec4 elements per lane, lane groups,
// V rows per thread in flight (COAL only).
const KG: u32 = $KGu;
const KU: u32 = $KUu;
const KE: u32 = HD4 / KG;
const NG: u32 = 256u / KG;
const VU: u32 = $VUu;
var<workgroup> S: array<f32, CTX>;
var<workgroup> red: array<f32, 256>;
var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> ks: array<vec4<f32>, 64>;
var<workgroup> vs: array<vec4<f32>, 64>;
var<workgroup> vred: array<vec4<f32>, 256>;
var<workgroup> wempty: u32;
// COAL with the workgroup-memory reduction: each lane's partial dot of its group's KU rows.
var<workgroup> kpart: array<f32, $KPARTu>;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in src/gpu/kernels.rs).
$R16

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x / NCH;
    let ch = wg.x % NCH;
    let tok = wg.y;
    let seq = TI[tok].x;
    let pos = TI[tok].y;
    let n = pos + 1u;
    // First visible position (a sliding window hides the older ones); chunks cut [lo, n).
    let lo = select(0u, n - min(n, P.window), P.window > 0u);
    let clen = max(LMIN, (n - lo + NCH - 1u) / NCH);
    let p0 = min(n, lo + ch * clen);
    let p1 = min(n, p0 + clen);
    // Scored positions [s0, s1): the chunk, or all visible ones (EXACT).
    let s0 = select(p0, lo, EXACT);
    let s1 = select(p1, n, EXACT);
    if (NCH > 1u) {
        // A chunk past the last position: a zero accumulator and an empty (max, sum).
        if (lid == 0u) {
            wempty = select(0u, 1u, p0 >= n);
        }
        if (workgroupUniformLoad(&wempty) == 1u) {
            if (SKIP) {
                return;
            }
            let part = (tok * P.n_head + h) * NCH + ch;
            if (lid < P.hd) {
                O[part * P.hd + lid] = 0.0;
            }
            if (lid == 0u) {
                O[P.pad1 + 2u * part] = -3.0e38;
                O[P.pad1 + 2u * part + 1u] = 0.0;
            }
$ARRIVE            return;
        }
    }
    let grp = P.n_head / P.n_kv;
    let kvh = h / grp;
    let hd4 = HD4;
    let half = P.hd / 2u;
    let row = tok * P.q_ld;
    let kvl4 = P.kv_ld / 4u;
    let cb4 = seq * P.ctx * kvl4;
    let kb4 = kvh * hd4;
    // hd/4 threads per position group (one vec4 of V each), 256 / (hd/4) groups.
    let groups = 256u / hd4;
    let d4 = lid % hd4;
    let gi = lid / hd4;
    let vb = cb4 + kb4 + d4;
    let pe = min(p1, pos);
    // Prefetch (older positions only: the new one is stored by this dispatch).
    let kp = s0 + lid;
    let kpre = KPRE && !COAL && kp < s1 && kp != pos;
    var kr: array<vec4<f32>, HD4>;
    if (kpre) {
        let ko = cb4 + kp * kvl4 + kb4;
        for (var d = 0u; d < HD4; d++) {
            kr[d] = kc_ld(ko + d);
        }
    }
    let vpre = VPRE && !COAL && gi < groups && p0 + gi + 3u * groups < pe;
    var pv0 = vec4<f32>(0.0);
    var pv1 = vec4<f32>(0.0);
    var pv2 = vec4<f32>(0.0);
    var pv3 = vec4<f32>(0.0);
    if (vpre) {
        let p = p0 + gi;
        pv0 = vc_ld(vb + p * kvl4);
        pv1 = vc_ld(vb + (p + groups) * kvl4);
        pv2 = vc_ld(vb + (p + 2u * groups) * kvl4);
        pv3 = vc_ld(vb + (p + 3u * groups) * kvl4);
    }
    // NEW_TOKEN{ (also the body of shaders/attn_decode_seg.wgsl's $NEW_TOKEN)
    if (lid < half) {
        let k = lid;
        let qo = row + h * P.hd + 2u * k;
        let ko = row + P.n_head * P.hd + kvh * P.hd + 2u * k;
        let vo = row + (P.n_head + P.n_kv) * P.hd + kvh * P.hd + 2u * k;
        var q0 = QKV[qo];
        var q1 = QKV[qo + 1u];
        var k0 = QKV[ko];
        var k1 = QKV[ko + 1u];
        if (2u * k < P.n_rot) {
            let cs = CS[pos * (P.n_rot / 2u) + k];
            let a0 = q0 * cs.x - q1 * cs.y;
            let a1 = q0 * cs.y + q1 * cs.x;
            let b0 = k0 * cs.x - k1 * cs.y;
            let b1 = k0 * cs.y + k1 * cs.x;
            q0 = a0;
            q1 = a1;
            k0 = b0;
            k1 = b1;
        }
        let c = 2u * (k % 2u);
        qs[k / 2u][c] = r16(q0);
        qs[k / 2u][c + 1u] = r16(q1);
        ks[k / 2u][c] = r16(k0);
        ks[k / 2u][c + 1u] = r16(k1);
        vs[k / 2u][c] = r16(QKV[vo]);
        vs[k / 2u][c + 1u] = r16(QKV[vo + 1u]);
    }
    // }NEW_TOKEN
    workgroupBarrier();
    if (h % grp == 0u && p0 <= pos && pos < p1) {
        let so = cb4 + pos * kvl4 + kb4;
        for (var i = lid; i < hd4; i += 256u) {
            kc_st(so + i, ks[i]);
            vc_st(so + i, vs[i]);
        }
    }
    var mx = -3.0e38;
    if (COAL) {
        let gl = lid % KG;
        let gr = lid / KG;
        var qr: array<vec4<f32>, KE>;
        for (var j = 0u; j < KE; j++) {
            qr[j] = qs[gl + j * KG];
        }
        let kb = cb4 + kb4 + gl;
        // Uniform bounds (the reduction's shuffles and barriers); rows past s1 score zeros.
        for (var b = s0; b < s1; b += NG * KU) {
            var kk: array<vec4<f32>, KE * KU>;
            for (var u = 0u; u < KU; u++) {
                let p = b + gr + u * NG;
                if (p < s1) {
                    if (p == pos) {
                        for (var j = 0u; j < KE; j++) {
                            kk[u * KE + j] = ks[gl + j * KG];
                        }
                    } else {
                        let ko = kb + p * kvl4;
                        for (var j = 0u; j < KE; j++) {
                            kk[u * KE + j] = kc_ld(ko + j * KG);
                        }
                    }
                }
            }
$KRED        }
    } else {
        for (var p = s0 + lid; p < s1; p += 256u) {
            // The K row into registers first (the new one from ks, a prefetched one from kr,
            // the others from the cache), then one dot loop: a single arithmetic path, so
            // that the GPU compiler's choices (FMA contraction) are the same whichever source
            // it read.
            var kv: array<vec4<f32>, HD4>;
            if (p == pos) {
                for (var d = 0u; d < HD4; d++) {
                    kv[d] = ks[d];
                }
            } else if (kpre && p == kp) {
                kv = kr;
            } else {
                let ko = cb4 + p * kvl4 + kb4;
                for (var d = 0u; d < HD4; d++) {
                    kv[d] = kc_ld(ko + d);
                }
            }
            var s = 0.0;
            for (var d = 0u; d < HD4; d++) {
                s += dot(qs[d], kv[d]);
            }
            s *= P.scale;
            S[p - s0] = s;
            mx = max(mx, s);
        }
    }
$RED_MAX    var sum = 0.0;
    for (var p = lid; p < s1 - s0; p += 256u) {
        let e = exp(S[p] - m);
        S[p] = e;
        sum += e;
    }
$RED_SUM    var acc = vec4<f32>(0.0);
    if (COAL && gi < groups) {
        // Older positions VU at a time, the new one from vs.
        var p = p0 + gi;
        for (; p + (VU - 1u) * groups < pe; p += VU * groups) {
            var vv: array<vec4<f32>, VU>;
            for (var u = 0u; u < VU; u++) {
                vv[u] = vc_ld(vb + (p + u * groups) * kvl4);
            }
            for (var u = 0u; u < VU; u++) {
                acc += r16(S[p + u * groups - s0] * inv) * vv[u];
            }
        }
        for (; p < pe; p += groups) {
            acc += r16(S[p - s0] * inv) * vc_ld(vb + p * kvl4);
        }
        if (p == pos && pos < p1) {
            acc += r16(S[p - s0] * inv) * vs[d4];
        }
    } else if (gi < groups) {
        // Older positions four at a time (four loads in flight), the new one from vs.
        // The first four rows from the prefetch registers where there are any, the others
        // loaded here; one accumulation path for both (see the K rows above).
        var p = p0 + gi;
        var first = vpre;
        for (; p + 3u * groups < pe; p += 4u * groups) {
            var v0 = pv0;
            var v1 = pv1;
            var v2 = pv2;
            var v3 = pv3;
            if (!first) {
                v0 = vc_ld(vb + p * kvl4);
                v1 = vc_ld(vb + (p + groups) * kvl4);
                v2 = vc_ld(vb + (p + 2u * groups) * kvl4);
                v3 = vc_ld(vb + (p + 3u * groups) * kvl4);
            }
            first = false;
            acc += r16(S[p - s0] * inv) * v0;
            acc += r16(S[p + groups - s0] * inv) * v1;
            acc += r16(S[p + 2u * groups - s0] * inv) * v2;
            acc += r16(S[p + 3u * groups - s0] * inv) * v3;
        }
        for (; p < pe; p += groups) {
            acc += r16(S[p - s0] * inv) * vc_ld(vb + p * kvl4);
        }
        if (p == pos && pos < p1) {
            acc += r16(S[p - s0] * inv) * vs[d4];
        }
    }
    vred[lid] = acc;
    workgroupBarrier();
    if (lid < hd4) {
        var t = vec4<f32>(0.0);
        for (var g = 0u; g < groups; g++) {
            t += vred[g * hd4 + lid];
        }
        var o = tok * P.o_ld + h * P.hd + 4u * lid;
        if (NCH > 1u) {
            let part = (tok * P.n_head + h) * NCH + ch;
            o = part * P.hd + 4u * lid;
            if (lid == 0u) {
                O[P.pad1 + 2u * part] = m;
                O[P.pad1 + 2u * part + 1u] = tot;
            }
        }
        O[o] = t.x;
        O[o + 1u] = t.y;
        O[o + 2u] = t.z;
        O[o + 3u] = t.w;
    }
$ARRIVE}
