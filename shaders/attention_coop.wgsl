// Causal attention of a batch of tokens over the KV cache on cooperative matrices (tensor
// cores): flash attention with the CPU backend's probabilities. One workgroup (4 subgroups of
// 32) per (head, QT = 64 consecutive batch tokens); the heaviest tiles (last tokens, most
// keys) are dispatched first. Subgroup sg owns the 16 tile rows 16·sg.. entirely: its query
// fragments, its scores, softmax state, probabilities and output accumulators, so that only
// the K/V blocks are shared between subgroups. Q, K, V are f16-valued (RoPE and the KV store
// round them, as the CPU backend and llama.cpp's f16 KV cache do), so their f16 products are
// exact and only the f32 summation order differs from attention.wgsl.
//   Q: the tile's 64 × HD query rows go through workgroup memory once into HD/16 A fragments
//      per subgroup, kept in registers.
//   pass 1: per key block of KB = 32 positions, S = Q·Kᵀ (16 × 32 per subgroup, two 16 × 16
//      tiles) into the subgroup's slice of workgroup memory; lane l keeps the running maximum
//      and sum of exp of row l % 16 over key half l / 16 (online softmax); the two halves
//      meet through a subgroup shuffle.
//   pass 2: S again, P = exp(s − max) / sum rounded to f16 (as attention.wgsl and the CPU
//      backend), O += P·V (HD/16 f32 accumulators of 16 × 16 per subgroup).
// Key blocks past the tile's last position are never visited (causal skip). Tokens of one
// tile from different sequences are handled one sequence after the other (increasing ids;
// every invocation reads the same token table). Grouped-query heads share their KV head.
enable f16;
enable wgpu_cooperative_matrix;

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
    // Sliding window (gemma3's local layers): a token at p sees keys kp with p - kp < window;
    // 0: none.
    window: u32,
}
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> KC: array<$KV4>;
@group(0) @binding(2) var<storage, read> VC: array<$KV4>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;

// Head size, query tokens per workgroup, keys per block, invocations per workgroup.
const HD: u32 = $HDu;
const HD4: u32 = HD / 4u;
const QT: u32 = 64u;
const KB: u32 = 32u;
const NTH: u32 = 128u;
// f16 row stride of the K and Q tiles (16 bytes of padding against bank conflicts).
const LDK: u32 = HD + 8u;
// The V block follows the K block, transposed (V[d][key], row stride LDV).
const VOFF: u32 = KB * LDK;
const LDV: u32 = KB + 8u;
// f16 row stride of P (P[token][key]).
const LDP: u32 = KB + 8u;
const NONE: u32 = 0xffffffffu;

// K block (KB rows of LDK) and the transposed V block (HD rows of LDV); the Q tile (QT rows
// of LDK) at the start.
var<workgroup> KV: array<f16, $KVNu>;
// Per subgroup 512 f32: its two 16 × 16 score tiles (column-major), later its output tiles.
var<workgroup> Ss: array<f32, 2048>;
var<workgroup> Ps: array<f16, QT * LDP>;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in src/gpu/kernels.rs).
$R16

// Key position kp is visible from position pos (causal, inside the sliding window).
fn vis(kp: u32, pos: u32) -> bool {
    return kp <= pos && (P.window == 0u || kp + P.window > pos);
}

// Batch token `t` belongs to sequence `seq`.
fn of_seq(t: u32, seq: u32) -> bool {
    return t < P.n_tok && TI[t].x == seq;
}

// K (and with `with_v` V) rows of positions kb0 .. kb0 + KB of the sequence whose cache
// starts at `cb4` (vec4 units) as f16; positions from `nkeys` on are zero.
fn load_block(cb4: u32, kb4: u32, kb0: u32, nkeys: u32, lid: u32, with_v: bool) {
    for (var i = lid; i < KB * HD4; i += NTH) {
        let r = i / HD4;
        let c = i % HD4;
        let kp = kb0 + r;
        var k = vec4<f16>(0.0);
        var v = vec4<f16>(0.0);
        if (kp < nkeys) {
            let g = cb4 + kp * (P.kv_ld / 4u) + kb4 + c;
            k = vec4<f16>(kc_ld(g));
            if (with_v) {
                v = vec4<f16>(vc_ld(g));
            }
        }
        let o = r * LDK + 4u * c;
        KV[o] = k.x;
        KV[o + 1u] = k.y;
        KV[o + 2u] = k.z;
        KV[o + 3u] = k.w;
        if (with_v) {
            let ov = VOFF + 4u * c * LDV + r;
            KV[ov] = v.x;
            KV[ov + LDV] = v.y;
            KV[ov + 2u * LDV] = v.z;
            KV[ov + 3u * LDV] = v.w;
        }
    }
}

@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let n_tiles = (P.n_tok + QT - 1u) / QT;
    let t0 = (n_tiles - 1u - wg.y) * QT;
    let kb4 = (h / (P.n_head / P.n_kv)) * HD4;
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = sg * 16u;
    let sb = sg * 512u;
    // Softmax steps: lane → tile row rb + sr, keys 16·kh .. 16·kh + 16 of each block.
    let sr = lane % 16u;
    let kh = lane / 16u;
    var tinfo = vec2<u32>(NONE, 0u);
    if (t0 + rb + sr < P.n_tok) {
        tinfo = TI[t0 + rb + sr];
    }
    for (var i = lid; i < QT * HD4; i += NTH) {
        let tok = min(t0 + i / HD4, P.n_tok - 1u);
        let q = vec4<f16>(Q[tok * (P.q_ld / 4u) + h * HD4 + i % HD4]);
        let o = (i / HD4) * LDK + 4u * (i % HD4);
        KV[o] = q.x;
        KV[o + 1u] = q.y;
        KV[o + 2u] = q.z;
        KV[o + 3u] = q.w;
    }
    workgroupBarrier();
$Q_LOAD
    // Zero accumulator (initialised here, outside every loop) and the output accumulators.
    var zc = coop_mat16x16<f32, C>();
$O_DECL
    var lo = 0u;
    loop {
        // The tile's next sequence (smallest id ≥ lo) and its last position in the tile.
        var seq = NONE;
        var mp = 0u;
        var mn = 0u;
        for (var i = 0u; i < QT; i++) {
            if (t0 + i < P.n_tok) {
                let x = TI[t0 + i];
                if (x.x >= lo && x.x < seq) {
                    seq = x.x;
                    mp = x.y;
                    mn = x.y;
                } else if (x.x == seq) {
                    mp = max(mp, x.y);
                    mn = min(mn, x.y);
                }
            }
        }
        // First key block a token of the tile sees (sliding window).
        var kstart = 0u;
        if (P.window > 0u && mn + 1u > P.window) {
            kstart = (mn + 1u - P.window) / KB * KB;
        }
        if (seq == NONE) {
            break;
        }
        lo = seq + 1u;
        let nkeys = mp + 1u;
        let cb4 = seq * P.ctx * (P.kv_ld / 4u);
        let my = tinfo.x == seq;
        let rpos = tinfo.y;
        // Pass 1: running maximum and sum of exp of the lane's row and key half.
        var m = -3.0e38;
        var l = 0.0;
        for (var kb0 = kstart; kb0 < nkeys; kb0 += KB) {
            workgroupBarrier();
            load_block(cb4, kb4, kb0, nkeys, lid, false);
            workgroupBarrier();
$S_MMA
            workgroupBarrier();
            var bm = -3.0e38;
            for (var j = 0u; j < 16u; j++) {
                if (my && vis(kb0 + 16u * kh + j, rpos)) {
                    bm = max(bm, Ss[sb + 256u * kh + 16u * j + sr] * P.scale);
                }
            }
            if (bm > -1.0e38) {
                let mn = max(m, bm);
                var sum = 0.0;
                for (var j = 0u; j < 16u; j++) {
                    if (vis(kb0 + 16u * kh + j, rpos)) {
                        sum += exp(Ss[sb + 256u * kh + 16u * j + sr] * P.scale - mn);
                    }
                }
                l = l * exp(m - mn) + sum;
                m = mn;
            }
        }
        // Both key halves of the row (lanes l and l ^ 16).
        let m2 = subgroupShuffleXor(m, 16u);
        let l2 = subgroupShuffleXor(l, 16u);
        let mr = max(m, m2);
        let ls = l * exp(m - mr) + l2 * exp(m2 - mr);
        let li = select(0.0, 1.0 / ls, ls > 0.0);
        // Pass 2: probabilities and O += P·V.
$O_ZERO
        for (var kb0 = kstart; kb0 < nkeys; kb0 += KB) {
            workgroupBarrier();
            load_block(cb4, kb4, kb0, nkeys, lid, true);
            workgroupBarrier();
$S_MMA
            workgroupBarrier();
            for (var j = 0u; j < 16u; j++) {
                var p = 0.0;
                if (my && vis(kb0 + 16u * kh + j, rpos)) {
                    p = r16(exp(Ss[sb + 256u * kh + 16u * j + sr] * P.scale - mr) * li);
                }
                Ps[(rb + sr) * LDP + 16u * kh + j] = f16(p);
            }
            workgroupBarrier();
$PV_MMA
        }
        workgroupBarrier();
$O_STORE
    }
}
