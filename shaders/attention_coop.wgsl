// Causal attention of a batch of tokens over the KV cache on cooperative matrices (tensor
// cores): flash attention with the CPU backend's probabilities. One workgroup (8 subgroups of
// 32) per (head, QT = 64 consecutive batch tokens); the heaviest tiles (last tokens, most
// keys) are dispatched first. Q, K, V are f16-valued (RoPE and the KV store round them, as
// the CPU backend and llama.cpp's f16 KV cache do), so their f16 products are exact and only
// the f32 summation order differs from attention.wgsl.
//   Q: the tile's 64 × HD query rows go through workgroup memory once into A fragments that
//      each subgroup keeps in registers (its 16 rows).
//   pass 1: per key block of KB = 32 positions, S = Q·Kᵀ (64 × 32, one 16 × 16 tile per
//      subgroup, HD/16 products) into workgroup memory; every thread keeps the running
//      maximum and sum of exp of its row's 8 slots (online softmax), combined per row.
//   pass 2: S again, P = exp(s − max) / sum rounded to f16 (as attention.wgsl and the CPU
//      backend), O += P·V (each subgroup 16 rows × HD/2 columns of O in f32 accumulators).
// Key blocks past the tile's last position are never visited (causal skip). Tokens of one
// tile from different sequences are handled one sequence after the other. Grouped-query
// heads share their KV head.
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
    pad2: u32,
}
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> KC: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> VC: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;

// Head size, query tokens per workgroup, keys per block.
const HD: u32 = $HDu;
const HD4: u32 = HD / 4u;
const QT: u32 = 64u;
const KB: u32 = 32u;
// f16 row stride of the K and Q tiles (16 bytes of padding against bank conflicts).
const LDK: u32 = HD + 8u;
// The V block follows the K block, transposed (V[d][key], row stride LDV).
const VOFF: u32 = KB * LDK;
const LDV: u32 = KB + 8u;
// f16 row stride of P (P[token][key]).
const LDP: u32 = KB + 8u;
// Score slots per thread in the softmax steps (thread: row lid % QT, slots (lid / QT)·KPT..).
const KPT: u32 = QT * KB / 256u;
const NONE: u32 = 0xffffffffu;

// K block (KB rows of LDK) and the transposed V block (HD rows of LDV); the Q tile (QT rows
// of LDK) at the start.
var<workgroup> KV: array<f16, $KVNu>;
// One 16 × 16 f32 tile per subgroup, column-major: its scores, then its output tiles.
var<workgroup> Ss: array<f32, 2048>;
var<workgroup> Ps: array<f16, QT * LDP>;
var<workgroup> Rm: array<f32, 256>;
var<workgroup> Rl: array<f32, 256>;
var<workgroup> Ms: array<f32, QT>;
var<workgroup> Li: array<f32, QT>;
var<workgroup> Tseq: array<u32, QT>;
var<workgroup> Tpos: array<u32, QT>;
var<workgroup> Tdone: array<u32, QT>;
// (sequence, last position) of the pass over one sequence; NONE when every token is done.
var<workgroup> cur: vec2<u32>;

fn r16(x: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
}

// Score of tile row `r` with key `k` of the block: subgroup (r / 16) + 4 · (k / 16) stored
// it at its 16 × 16 slice of Ss, column-major.
fn sidx(r: u32, k: u32) -> u32 {
    return ((r / 16u) + 4u * (k / 16u)) * 256u + (k % 16u) * 16u + r % 16u;
}

// Token `qi` of the tile takes part in the pass over sequence `seq`.
fn mine(qi: u32, seq: u32) -> bool {
    return Tdone[qi] == 0u && Tseq[qi] == seq;
}

// K (and with `with_v` V) rows of positions kb0 .. kb0 + KB of the sequence whose cache
// starts at `cb4` (vec4 units) as f16; positions from `nkeys` on are zero.
fn load_block(cb4: u32, kb4: u32, kb0: u32, nkeys: u32, lid: u32, with_v: bool) {
    for (var i = lid; i < KB * HD4; i += 256u) {
        let r = i / HD4;
        let c = i % HD4;
        let kp = kb0 + r;
        var k = vec4<f16>(0.0);
        var v = vec4<f16>(0.0);
        if (kp < nkeys) {
            let g = cb4 + kp * (P.kv_ld / 4u) + kb4 + c;
            k = vec4<f16>(KC[g]);
            if (with_v) {
                v = vec4<f16>(VC[g]);
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

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let n_tiles = (P.n_tok + QT - 1u) / QT;
    let t0 = (n_tiles - 1u - wg.y) * QT;
    let kb4 = (h / (P.n_head / P.n_kv)) * HD4;
    let sg = lid / 32u;
    let lane = lid % 32u;
    // Subgroup sg: rows rb .. rb + 16 of S and O, key block kc of S, column half kc of O.
    let rb = (sg % 4u) * 16u;
    let kc = sg / 4u;
    // Softmax steps: thread row and first slot.
    let r = lid % QT;
    let k0 = (lid / QT) * KPT;
    if (lid < QT) {
        let tok = t0 + lid;
        if (tok < P.n_tok) {
            Tseq[lid] = TI[tok].x;
            Tpos[lid] = TI[tok].y;
            Tdone[lid] = 0u;
        } else {
            Tseq[lid] = NONE;
            Tpos[lid] = 0u;
            Tdone[lid] = 1u;
        }
    }
    for (var i = lid; i < QT * HD4; i += 256u) {
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
    loop {
        workgroupBarrier();
        if (lid == 0u) {
            var s = NONE;
            var mp = 0u;
            for (var i = 0u; i < QT; i++) {
                if (Tdone[i] == 0u) {
                    if (s == NONE) {
                        s = Tseq[i];
                    }
                    if (Tseq[i] == s) {
                        mp = max(mp, Tpos[i]);
                    }
                }
            }
            cur = vec2<u32>(s, mp);
        }
        let c = workgroupUniformLoad(&cur);
        if (c.x == NONE) {
            break;
        }
        let seq = c.x;
        let nkeys = c.y + 1u;
        let cb4 = seq * P.ctx * (P.kv_ld / 4u);
        let my = mine(r, seq);
        let rpos = Tpos[r];
        // Pass 1: running maximum and sum of exp of the thread's slots.
        var m = -3.0e38;
        var l = 0.0;
        for (var kb0 = 0u; kb0 < nkeys; kb0 += KB) {
            load_block(cb4, kb4, kb0, nkeys, lid, false);
            workgroupBarrier();
$S_MMA
            workgroupBarrier();
            var bm = -3.0e38;
            for (var j = 0u; j < KPT; j++) {
                if (my && kb0 + k0 + j <= rpos) {
                    bm = max(bm, Ss[sidx(r, k0 + j)] * P.scale);
                }
            }
            if (bm > -1.0e38) {
                let mn = max(m, bm);
                var sum = 0.0;
                for (var j = 0u; j < KPT; j++) {
                    if (kb0 + k0 + j <= rpos) {
                        sum += exp(Ss[sidx(r, k0 + j)] * P.scale - mn);
                    }
                }
                l = l * exp(m - mn) + sum;
                m = mn;
            }
        }
        Rm[lid] = m;
        Rl[lid] = l;
        workgroupBarrier();
        if (lid < QT) {
            var mm = -3.0e38;
            for (var g = 0u; g < 256u / QT; g++) {
                mm = max(mm, Rm[g * QT + lid]);
            }
            var ll = 0.0;
            for (var g = 0u; g < 256u / QT; g++) {
                ll += Rl[g * QT + lid] * exp(Rm[g * QT + lid] - mm);
            }
            Ms[lid] = mm;
            Li[lid] = select(0.0, 1.0 / ll, ll > 0.0);
        }
        // Pass 2: probabilities and O += P·V.
$O_ZERO
        for (var kb0 = 0u; kb0 < nkeys; kb0 += KB) {
            workgroupBarrier();
            load_block(cb4, kb4, kb0, nkeys, lid, true);
            workgroupBarrier();
$S_MMA
            workgroupBarrier();
            let mr = Ms[r];
            let li = Li[r];
            for (var j = 0u; j < KPT; j++) {
                var p = 0.0;
                if (my && kb0 + k0 + j <= rpos) {
                    p = r16(exp(Ss[sidx(r, k0 + j)] * P.scale - mr) * li);
                }
                Ps[r * LDP + k0 + j] = f16(p);
            }
            workgroupBarrier();
$PV_MMA
        }
        workgroupBarrier();
$O_STORE
        if (lid < QT && mine(lid, seq)) {
            Tdone[lid] = 1u;
        }
    }
}
